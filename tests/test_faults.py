"""Reliability: whatever the upstream does, the pages stay up on the last good snapshot, show why it
is stale, back off without sending anything, and recover by themselves; nothing is lost on the way
(mirrored batches, audit entries), and a worker killed mid-import resumes where it stopped."""

from __future__ import annotations

import datetime as dt
import html
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from batches import audit
from batches import sync as sync_module
from batches.accounts import Account
from batches.client import UpstreamClient
from batches.models import AuditEntry, Batch, SyncState
from batches.simulator import Fault
from batches.sync import BACKOFF_BASE_SECONDS, run_cycle, sync_account
from tests.conftest import SIM_KEY, child_env, manage, sqlite_url, start_manage, stop_process

LIST_URL = reverse("batch_list")
BANNER_RE = re.compile(r'<div class="banner banner-error sync-error"[^>]*>(.*?)</div>', re.S)
WARNING_RE = re.compile(r'<div class="banner banner-warning sync-warning"[^>]*>(.*?)</div>', re.S)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Upstream:
    """The failing world of one scenario: the simulator and the account the dashboard uses."""

    simulator: Any
    good: Account
    settings: Any
    account: Account = field(init=False)

    def __post_init__(self) -> None:
        self.account = self.good

    def use(self, account: Account) -> None:
        self.account = account
        self.settings.UPSTREAM_ACCOUNTS = {account.name: account}

    def fault(self, **kwargs: Any) -> None:
        self.simulator.add_fault(Fault(**kwargs))

    def recover(self) -> None:
        self.simulator.clear_faults()
        self.use(self.good)


@dataclass(frozen=True)
class Scenario:
    name: str
    inject: Callable[[Upstream], None]
    title: str  # UpstreamError.title, as the banner names it
    status: int | None = None  # the HTTP status the upstream answered with, if it answered
    retry_after: float | None = None


SCENARIOS = [
    Scenario(
        "401-bad-key",
        lambda up: up.use(Account(name="sim", api_key="sk-wrong-key-0123456789", base_url=up.good.base_url)),
        "Authentication failed",
        401,
    ),
    Scenario("403", lambda up: up.fault(kind="status", status=403), "Permission denied", 403),
    Scenario("404-list", lambda up: up.fault(kind="status", status=404, path="^/batches$"), "Not found", 404),
    Scenario(
        "429-retry-after",
        lambda up: up.fault(kind="status", status=429, retry_after=90),
        "Rate limited",
        429,
        retry_after=90,
    ),
    *(
        Scenario(
            f"{code}-burst",
            lambda up, c=code: up.fault(kind="status", status=c),
            "Upstream server error",
            code,
        )
        for code in (500, 502, 503)
    ),
    Scenario("read-timeout", lambda up: up.fault(kind="timeout", seconds=3), "Upstream timed out"),
    Scenario(
        "connection-refused",
        lambda up: up.use(Account(name="sim", api_key=SIM_KEY, base_url=f"http://127.0.0.1:{closed_port()}")),
        "Upstream unreachable",
    ),
    Scenario("connection-reset", lambda up: up.fault(kind="reset"), "Upstream unreachable"),
    Scenario(
        "malformed-json",
        lambda up: up.fault(kind="malformed", path="^/batches$"),
        "Malformed upstream response",
        200,
    ),
]


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP attempt the client makes, answered or not (a refused connection never reaches
    the simulator's counters)."""
    made: list[str] = []
    original = UpstreamClient._attempt

    def counting(self: UpstreamClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        made.append(f"{method} {path}")
        return original(self, method, path, *args, **kwargs)

    monkeypatch.setattr(UpstreamClient, "_attempt", counting)
    return made


def append_audit_entries(batch_ids: list[str]) -> list[int]:
    return [
        audit.append(
            event=AuditEntry.Event.CANCEL,
            outcome=AuditEntry.Outcome.ERROR,
            actor_username="alice",
            account="sim",
            batch_id=batch_id,
            status_before="in_progress",
            reason=f"fault drill {n}",
            error_message="Upstream unreachable",
        ).seq
        for n, batch_id in enumerate(batch_ids)
    ]


def page(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, f"{url} answered {response.status_code}"
    return response.content.decode()


def error_banner(body: str) -> str:
    found = BANNER_RE.search(body)
    assert found, "no sync error banner on the page"
    return html.unescape(found.group(1))


def mirror() -> dict[str, str]:
    return dict(Batch.objects.filter(account="sim").values_list("batch_id", "status"))


@pytest.mark.django_db
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_failing_upstream_keeps_pages_up_backs_off_and_recovers(
    scenario: Scenario, simulator, sim_account, settings, bob_client, attempts
):
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    first = sync_account(sim_account)
    assert first is not None and first.ok
    before = mirror()
    newest = Batch.objects.order_by("-created_at", "-batch_id").first()
    assert newest is not None
    detail_url = reverse("batch_detail", args=["sim", newest.batch_id])
    audit_seqs = append_audit_entries(sorted(before)[:3])
    upstream = Upstream(simulator, sim_account, settings)

    scenario.inject(upstream)
    started = timezone.now()
    failed = sync_account(upstream.account)

    # The cycle failed with the expected kind of error, and the mirror kept every batch.
    assert failed is not None and failed.error is not None, failed
    assert failed.error.title == scenario.title
    assert mirror() == before
    state = SyncState.objects.get(account="sim")
    assert state.consecutive_failures == 1
    assert state.last_error["title"] == scenario.title
    assert state.last_error["status"] == scenario.status
    # Backing off: the next attempt is in the future, as far as a 429 asked.
    assert state.next_attempt_at is not None and state.next_attempt_at > timezone.now()
    wait = (state.next_attempt_at - started).total_seconds()
    if scenario.retry_after:
        assert scenario.retry_after - 1 <= wait <= scenario.retry_after + 5
    else:
        assert BACKOFF_BASE_SECONDS - 1 <= wait <= BACKOFF_BASE_SECONDS + 5

    # The pages answer from the snapshot, with a banner that says what went wrong.
    for url in (LIST_URL, detail_url):
        body = page(bob_client, url)
        banner = error_banner(body)
        assert scenario.title in banner
        assert "'sim'" in banner
        if scenario.status and scenario.status != 200:
            assert f"HTTP {scenario.status}" in banner
        request_id = state.last_error["request_id"]
        if scenario.status is not None:
            # The upstream answered: its x-request-id is what people quote to support.
            assert request_id and request_id.startswith("req_")
            assert request_id in banner
        else:
            assert request_id is None
        assert newest.batch_id in body

    # While backing off, a cycle sends nothing at all.
    sent, counted = len(attempts), simulator.total_requests()
    assert sync_account(upstream.account) is None
    assert len(attempts) == sent and simulator.total_requests() == counted

    # Recovers by itself once the upstream is healthy and the backoff has passed.
    upstream.recover()
    SyncState.objects.filter(account="sim").update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))
    recovered = sync_account(sim_account)
    assert recovered is not None and recovered.ok, recovered
    state.refresh_from_db()
    assert state.consecutive_failures == 0 and state.last_error is None and state.next_attempt_at is None
    for url in (LIST_URL, detail_url):
        body = page(bob_client, url)
        assert not BANNER_RE.search(body)
        assert scenario.title not in body

    # Nothing was lost: every batch, every audit entry, and the chain still holds.
    assert set(mirror()) == set(before)
    assert list(
        AuditEntry.objects.filter(seq__in=audit_seqs).order_by("seq").values_list("seq", flat=True)
    ) == (audit_seqs)
    verified = audit.verify_chain()
    assert verified.ok, str(verified)


@pytest.mark.django_db
def test_an_empty_page_claiming_more_is_a_visible_warning_not_a_loss(simulator, sim_account, bob_client):
    assert sync_account(sim_account).ok
    before = mirror()
    simulator.add_fault(Fault(kind="empty_page", path="^/batches$"))

    result = sync_account(sim_account)

    assert result is not None and "cut short" in " ".join(result.warnings)
    assert mirror().keys() == before.keys()
    body = page(bob_client, LIST_URL)
    warning = WARNING_RE.search(body)
    assert warning and "cut short" in warning.group(1)

    simulator.clear_faults()
    SyncState.objects.filter(account="sim").update(last_attempt_at=None, next_attempt_at=None)
    assert sync_account(sim_account).ok
    assert not WARNING_RE.search(page(bob_client, LIST_URL))
    assert mirror().keys() == before.keys()


@pytest.mark.django_db
def test_client_retries_a_burst_of_two_503s_within_one_cycle(simulator, sim_account, settings):
    settings.UPSTREAM_MAX_RETRIES = 2
    burst = simulator.add_fault(Fault(kind="status", status=503, path="^/batches$", count=2))

    result = sync_account(sim_account)

    assert result is not None and result.ok, result
    assert burst.hits == 2 and not burst.active
    # The two refused attempts, then the pages of the first import.
    assert simulator.stats()["GET /batches"] == result.list_pages + 2
    state = SyncState.objects.get(account="sim")
    assert state.import_complete and state.consecutive_failures == 0 and state.last_error is None
    assert Batch.objects.filter(account="sim").count() == 300


# --- A worker killed mid-import ---------------------------------------------------------------


class Crash(BaseException):
    """The process dying: nothing in the sync catches it."""


@pytest.mark.django_db
def test_the_import_counter_survives_a_crash_between_a_page_and_its_cursor(
    simulator, sim_account, monkeypatch
):
    stored = {"pages": 0}
    original = sync_module.store_batches

    def crash_after_the_second_page(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        stored["pages"] += 1
        if stored["pages"] == 2:
            raise Crash
        return result

    monkeypatch.setattr(sync_module, "store_batches", crash_after_the_second_page)
    with pytest.raises(Crash):
        run_cycle(sim_account)
    monkeypatch.setattr(sync_module, "store_batches", original)
    # The crashed page went with its cursor: page and cursor commit together or not at all.
    assert Batch.objects.count() == 100
    assert SyncState.objects.get(account="sim").imported == 100

    assert run_cycle(sim_account).ok

    state = SyncState.objects.get(account="sim")
    assert state.import_complete and Batch.objects.count() == 300
    assert state.imported == 300


BIG = 5000


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # locked for a moment by the writer
            return -1


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def big_simulator(start_child_simulator) -> Iterator[Any]:
    sim = start_child_simulator(batches=BIG)
    # Slow the list down so that the import is certainly mid-way when the worker is killed.
    fault = {"kind": "latency", "seconds": 0.05, "path": "^/batches$"}
    assert requests.post(f"{sim.root_url}/_sim/faults", json=fault, timeout=5).status_code == 200
    yield sim


def _kill_mid_import(simulator_url: str, db: Path) -> dict[str, str]:
    """Start the worker, SIGKILL it some pages into the first import; the env to run it again."""
    env = child_env(DATABASE_URL=sqlite_url(db), OPENAI_API_KEY=SIM_KEY, OPENAI_BASE_URL=simulator_url)
    worker = start_manage("sync_batches", env=env)
    try:
        # Some pages in, far from the end: killed without a chance to clean up.
        _wait_until(lambda: _count(db, "SELECT COUNT(*) FROM batches_batch") >= 1000, 30, "1000 batches")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        stop_process(worker)
    imported = _count(db, "SELECT COUNT(*) FROM batches_batch")
    assert 1000 <= imported < BIG, "the worker was killed mid-import"
    assert _count(db, "SELECT import_complete FROM batches_syncstate WHERE account = 'default'") == 0
    return env


def _assert_rerun_completes_the_import(env: dict[str, str], simulator_root: str, db: Path) -> None:
    rerun = manage("sync_batches", "--once", env=env, timeout=60)

    assert rerun.returncode == 0, rerun.stderr
    assert "default:" in rerun.stdout and ", ok" in rerun.stdout, rerun.stdout
    upstream_ids = requests.get(f"{simulator_root}/_sim/batches", timeout=5).json()["ids"]
    assert len(upstream_ids) == BIG
    with sqlite3.connect(db) as conn:
        mirrored = [
            row[0] for row in conn.execute("SELECT batch_id FROM batches_batch WHERE account = 'default'")
        ]
        complete, imported, cursor = conn.execute(
            "SELECT import_complete, imported, import_after FROM batches_syncstate WHERE account = 'default'"
        ).fetchone()
    assert len(mirrored) == len(set(mirrored)) == BIG  # every id, exactly once
    assert set(mirrored) == set(upstream_ids)
    assert complete == 1 and cursor == ""
    # Each page and its cursor commit together, so the count is exact even after a kill.
    assert imported == BIG


def test_a_sync_process_killed_mid_import_resumes_once_its_lease_has_expired(big_simulator, child_db):
    env = _kill_mid_import(big_simulator.url, child_db)
    # The killed worker's lease runs out (sync.lease_seconds()); here it is moved into the past instead.
    with sqlite3.connect(child_db) as conn:
        conn.execute("UPDATE batches_syncstate SET running_since = '2000-01-01 00:00:00'")

    _assert_rerun_completes_the_import(env, big_simulator.root_url, child_db)


def test_a_sync_process_killed_mid_import_resumes_on_its_next_run(big_simulator, child_db):
    env = _kill_mid_import(big_simulator.url, child_db)

    _assert_rerun_completes_the_import(env, big_simulator.root_url, child_db)
