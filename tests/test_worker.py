"""`manage.py sync_batches`: one round fills the mirror and reports per account, and deletes
expired sessions; bad arguments and an empty configuration are clear errors; the loop stops cleanly
on SIGTERM."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import time
from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from batches.accounts import Account
from batches.models import Batch, Session, SyncState
from tests.conftest import SIM_KEY, child_env, sqlite_url, start_manage, stop_process


@pytest.fixture(autouse=True)
def keep_signal_handlers() -> Iterator[None]:
    """The command installs SIGTERM/SIGINT handlers; an in-process run must not keep them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def run(*args: str) -> str:
    out = StringIO()
    call_command("sync_batches", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_once_fills_the_mirror_and_prints_a_line_per_account(simulator, sim_server, settings):
    sim = Account(name="sim", api_key=SIM_KEY, base_url=sim_server.url)
    broken = Account(name="broken", api_key="sk-wrong-key-0123456789", base_url=sim_server.url)
    settings.UPSTREAM_ACCOUNTS = {"sim": sim, "broken": broken}
    settings.UPSTREAM_MAX_RETRIES = 0

    output = run("--once")

    assert Batch.objects.filter(account="sim").count() == 300
    assert SyncState.objects.get(account="sim").import_complete
    lines = output.splitlines()
    assert "sync_batches: 2 account(s)" in lines[0]
    # Three pages of 100 for "sim", and the one refused request of "broken".
    assert simulator.stats() == {"GET /batches": 3 + 1}
    assert [line for line in lines if line.startswith("sim: ")] == ["sim: 3 requests, 300 new, ok"]
    (broken_line,) = [line for line in lines if line.startswith("broken: ")]
    assert "error:" in broken_line and "HTTP 401" in broken_line
    assert lines[-1] == "sync_batches: stopped"


@pytest.mark.django_db
def test_account_option_limits_the_round_to_that_account(simulator, sim_account, settings):
    other = Account(name="other", api_key="sk-other-key-0123456789", base_url="http://127.0.0.1:9")
    settings.UPSTREAM_ACCOUNTS = {"sim": sim_account, "other": other}

    output = run("--once", "--account", "sim")

    assert "sim: " in output and "other: " not in output
    assert not SyncState.objects.filter(account="other").exists()


@pytest.mark.django_db
def test_unknown_account_is_a_command_error(sim_account, simulator):
    with pytest.raises(CommandError, match=r"unknown account.*nope"):
        run("--once", "--account", "nope")
    assert simulator.total_requests() == 0


@pytest.mark.django_db
def test_no_account_configured_is_a_command_error_that_says_what_to_set(settings):
    settings.UPSTREAM_ACCOUNTS = {}

    with pytest.raises(CommandError) as raised:
        run("--once")

    message = str(raised.value)
    assert "no upstream account" in message
    assert "OPENAI_API_KEY" in message and "UPSTREAM_ACCOUNTS" in message


def test_the_loop_stops_cleanly_on_sigterm(start_child_simulator, child_db):
    sim = start_child_simulator(batches=50)
    env = child_env(DATABASE_URL=sqlite_url(child_db), OPENAI_API_KEY=SIM_KEY, OPENAI_BASE_URL=sim.url)
    worker = start_manage("sync_batches", "--interval", "3600", env=env)
    try:
        assert worker.stdout is not None
        first_round = ""
        deadline = time.monotonic() + 20
        while not first_round.startswith("default: ") and time.monotonic() < deadline:
            first_round = worker.stdout.readline()
        assert first_round.startswith("default: ") and first_round.rstrip().endswith("ok"), first_round

        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = worker.communicate(timeout=10)
        stopped_after = time.monotonic() - sent
    finally:
        stop_process(worker)

    assert worker.returncode == 0, err
    assert stopped_after < 5
    assert "received SIGTERM" in out
    assert out.rstrip().endswith("sync_batches: stopped")
    assert "Traceback" not in err
    with sqlite3.connect(child_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM batches_batch").fetchone()[0] == 50
        # The lease is released on the way out: the next worker need not wait for it.
        assert conn.execute("SELECT running_since FROM batches_syncstate").fetchone()[0] is None


@pytest.mark.django_db
def test_a_round_deletes_expired_sessions_and_keeps_the_others(sim_account, simulator, bob_client):
    expired = Session.objects.create(
        session_key="x" * 32, session_data="", expire_date=timezone.now() - dt.timedelta(seconds=1)
    )
    live = bob_client.session.session_key

    run("--once")

    assert not Session.objects.filter(pk=expired.pk).exists()
    assert Session.objects.filter(pk=live).exists()
