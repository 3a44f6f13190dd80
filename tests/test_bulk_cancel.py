"""Bulk cancel from the list, against the live simulator: selected rows or every cancellable batch
matching a filter, each through its own upstream cancel and audit entry, one after the other."""

from __future__ import annotations

import datetime as dt
import html
import re
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches import bulk
from batches.audit import verify_chain
from batches.models import AuditEntry, Batch
from batches.simulator import Fault, SimClock, Simulator
from batches.sync import run_cycle, store_batches
from tests.conftest import csrf_checked_client
from tests.factories import batch_json, offline_account, upstream_cancels

HTMX = {"HX-Request": "true"}
TAG = "bulk-run-7"
URL = "/batches/cancel/"


@pytest.fixture
def simulator(sim_clock: SimClock) -> Simulator:
    """A small world: one list page per sync, plus the batches each test creates."""
    return Simulator(batches=20, seed=5, clock=sim_clock, cancel_delay=5)


@pytest.fixture(autouse=True)
def inline_jobs(settings: Any) -> None:
    settings.BULK_CANCEL_INLINE = True
    settings.BULK_CANCEL_PAUSE = 0


def create(simulator: Simulator, n: int, **overrides: Any) -> list[str]:
    return [
        simulator.create_batch(
            **{"status": "in_progress", "total": 100, "metadata": {"run": TAG}, **overrides}
        )["id"]
        for _ in range(n)
    ]


def fill(sim_account: Any) -> None:
    result = run_cycle(sim_account)
    assert result.ok, result.error


def ids_of(batch_ids: list[str]) -> list[str]:
    return [f"sim/{batch_id}" for batch_id in batch_ids]


def post(client: Client, **data: Any) -> Any:
    return client.post(URL, data, headers=HTMX, REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="bulk-test")


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


def job_id_of(response: Any) -> str:
    body = response.content.decode()
    start = body.index('data-job="') + len('data-job="')
    return body[start : start + 32]


# --- selected batches ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_selected_batches_are_each_cancelled_once_upstream_and_audited(
    alice, alice_client, simulator, sim_account
):
    chosen = create(simulator, 3)
    fill(sim_account)

    response = post(alice_client, ids=ids_of(chosen), reason="wrong prompt, all of them")

    assert response.status_code == 200
    body = text(response)
    assert "3 of 3 done" in body
    assert body.count("Accepted") == 3
    assert "hx-trigger" not in body  # inline: finished already, nothing to poll
    assert upstream_cancels(simulator) == 3
    for batch_id in chosen:
        assert simulator.get_batch(batch_id)["status"] == "cancelling"
        assert Batch.objects.get(batch_id=batch_id).status == "cancelling"
        entry = AuditEntry.objects.get(batch_id=batch_id)
        assert (entry.event, entry.outcome, entry.actor) == ("cancel", "accepted", alice)
        assert (entry.reason, entry.client_ip, entry.user_agent) == (
            "wrong prompt, all of them",
            "203.0.113.9",
            "bulk-test",
        )
    assert AuditEntry.objects.count() == 3
    assert verify_chain().ok

    # The progress URL answers the finished panel with 286: htmx stops polling.
    progress = alice_client.get(reverse("bulk_cancel_progress", args=[job_id_of(response)]))
    assert progress.status_code == 286
    assert "3 of 3 done" in text(progress)


@pytest.mark.django_db
def test_a_refusal_does_not_stop_the_others_and_is_shown_with_the_upstream_words(
    alice_client, simulator, sim_account
):
    first, last = create(simulator, 1), create(simulator, 1)
    done = simulator.create_batch(status="completed", total=10, metadata={"run": TAG})
    fill(sim_account)
    # The mirror is behind: it still thinks the completed batch runs.
    behind = {"status": "in_progress", "completed_at": None, "finalizing_at": None}
    Batch.objects.filter(batch_id=done["id"]).update(**behind)
    order = [first[0], done["id"], last[0]]

    response = post(alice_client, ids=ids_of(order))

    assert response.status_code == 200
    body = text(response)
    assert "3 of 3 done" in body
    assert upstream_cancels(simulator) == 3
    refused = AuditEntry.objects.get(batch_id=done["id"])
    assert (refused.outcome, refused.http_status) == ("refused", 409)
    assert "HTTP 409" in body
    assert "Cannot cancel a batch with status 'completed'." in body
    assert refused.request_id and refused.request_id in body
    for batch_id in (first[0], last[0]):
        assert AuditEntry.objects.get(batch_id=batch_id).outcome == "accepted"
        assert simulator.get_batch(batch_id)["status"] == "cancelling"
    assert "2 accepted" in body and "1 refused" in body


@pytest.mark.django_db
def test_a_batch_someone_else_is_cancelling_is_reported_not_sent_again(alice_client, simulator, sim_account):
    chosen = create(simulator, 2)
    fill(sim_account)
    Batch.objects.filter(batch_id=chosen[0]).update(
        cancel_requested_by="carol", cancel_requested_at=timezone.now()
    )

    response = post(alice_client, ids=ids_of(chosen))

    body = text(response)
    assert "Already requested" in body
    assert "Cancel requested by carol" in body
    assert upstream_cancels(simulator) == 1
    assert AuditEntry.objects.get(batch_id=chosen[0]).outcome == "in_flight"


def rate_limit_the_next_cancel(simulator: Simulator, monkeypatch: Any, retry_after: float) -> list[float]:
    """The next cancel upstream answers 429, asking to wait `retry_after` s; the bulk job's sleeps
    are recorded in the list returned, not slept."""
    simulator.add_fault(
        Fault(kind="status", status=429, path=r"/cancel$", method="POST", count=1, retry_after=retry_after)
    )
    waits: list[float] = []
    monkeypatch.setattr(bulk, "_sleep", waits.append)
    return waits


@pytest.mark.django_db
def test_rate_limit_on_the_first_is_waited_out_then_the_job_goes_on(
    alice_client, simulator, sim_account, monkeypatch
):
    chosen = create(simulator, 3)
    fill(sim_account)
    waits = rate_limit_the_next_cancel(simulator, monkeypatch, retry_after=0.3)

    response = post(alice_client, ids=ids_of(chosen))

    assert response.status_code == 200
    body = text(response)
    assert "3 of 3 done" in body and body.count("Accepted") == 3
    assert "waited 0.3 s" in body
    assert [w for w in waits if w] == [0.3]  # the upstream's Retry-After, once (the rest: pacing)
    assert upstream_cancels(simulator) == 4  # the 429, then the three that went through
    for batch_id in chosen:
        assert simulator.get_batch(batch_id)["status"] == "cancelling"
    # Every attempt is on record: the rate-limited one as refused (429), then the accepted one.
    first = list(
        AuditEntry.objects.filter(batch_id=chosen[0]).order_by("seq").values_list("outcome", "http_status")
    )
    assert first == [("refused", 429), ("accepted", None)]
    assert verify_chain().ok


@pytest.mark.django_db
def test_a_rate_limit_wait_is_bounded(alice_client, simulator, sim_account, settings, monkeypatch):
    settings.BULK_CANCEL_MAX_WAIT = 0.05
    chosen = create(simulator, 1)
    fill(sim_account)
    waits = rate_limit_the_next_cancel(simulator, monkeypatch, retry_after=120)

    response = post(alice_client, ids=ids_of(chosen))

    assert waits == [0.05]
    assert "1 of 1 done" in text(response)
    assert simulator.get_batch(chosen[0])["status"] == "cancelling"


# --- every batch matching a filter ---------------------------------------------------------------


@pytest.mark.django_db
def test_the_list_offers_to_cancel_every_matching_batch_with_the_exact_count(
    alice_client, bob_client, simulator, sim_account
):
    create(simulator, 3)
    simulator.create_batch(status="completed", total=10, metadata={"run": TAG})
    fill(sim_account)

    page = text(alice_client.get(reverse("batch_list"), {"q": TAG}))

    assert "Cancel all 3 active batches matching this filter" in page
    assert 'data-bulk-filter="?q=bulk-run-7"' in page
    assert 'data-bulk-total="3"' in page
    assert page.count("data-bulk-pick") == 3
    assert 'id="bulk-dialog"' in page
    viewer = text(bob_client.get(reverse("batch_list"), {"q": TAG}))
    assert "data-bulk" not in viewer
    assert 'id="bulk-dialog"' not in viewer


@pytest.mark.django_db
def test_the_lists_count_comes_from_its_aggregate_and_matches_what_a_cancel_checks(alice_client, settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account("sim"), "eu": offline_account("eu")}
    objs = [
        batch_json(status, model=model, metadata={"run": run})
        for status in ("validating", "in_progress", "finalizing", "cancelling", "completed", "failed")
        for model in ("gpt-4o-mini", "o4-mini")
        for run in (TAG, "other")
    ]
    store_batches("sim", objs[::2])
    store_batches("eu", objs[1::2])
    now = timezone.now()
    in_progress = Batch.objects.filter(status="in_progress")
    # A claim in flight takes a batch out of the count; an abandoned one (older than its TTL) does not.
    in_progress.filter(model="o4-mini").update(cancel_requested_by="x", cancel_requested_at=now)
    in_progress.filter(model="gpt-4o-mini", account="eu").update(
        cancel_requested_by="y", cancel_requested_at=now - dt.timedelta(days=1)
    )

    for params in (
        {},
        {"q": TAG},
        {"status": "active", "model": "o4-mini"},
        {"account": "eu"},
        {"status": "failed"},
    ):
        with CaptureQueriesContext(connection) as queries:
            page = text(alice_client.get(reverse("batch_list"), params))
        expected = bulk.count_for(bulk.filters_from_querystring(urlencode(params)))
        shown = re.search(r'data-bulk-total="(\d+)"', page)
        assert (int(shown.group(1)) if shown else 0) == expected, params
        assert not [q for q in queries.captured_queries if "COUNT(*)" in q["sql"]]
    # 3 cancellable statuses x 2 models x 2 runs, less the 2 claimed (the abandoned claim counts).
    assert bulk.count_for(bulk.filters_from_querystring("")) == 3 * 2 * 2 - 2


@pytest.mark.django_db
def test_filter_based_cancel_sends_only_the_matching_batches(alice_client, simulator, sim_account):
    chosen = create(simulator, 3)
    other = simulator.create_batch(status="in_progress", total=10, metadata={"run": "keep-me"})["id"]
    fill(sim_account)

    response = post(alice_client, filter="?q=" + TAG, expected="3", reason="stop the run")

    assert response.status_code == 200
    assert "3 of 3 done" in text(response)
    assert upstream_cancels(simulator) == 3
    assert {e.batch_id for e in AuditEntry.objects.all()} == set(chosen)
    assert simulator.get_batch(other)["status"] == "in_progress"


@pytest.mark.django_db
def test_a_changed_set_sends_nothing_and_answers_the_new_count(alice_client, simulator, sim_account):
    create(simulator, 3)
    fill(sim_account)

    response = post(alice_client, filter="?q=" + TAG, expected="2")

    assert response.status_code == 409
    assert response["X-Bulk-Count"] == "3"
    assert "3 can be cancelled now, not 2. Nothing was sent." in text(response)
    assert upstream_cancels(simulator) == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_filter_without_a_confirmed_count_is_refused(alice_client, simulator, sim_account):
    create(simulator, 1)
    fill(sim_account)

    assert post(alice_client, filter="?q=" + TAG).status_code == 400
    assert upstream_cancels(simulator) == 0


# --- who may, and what is refused before anything is sent -----------------------------------------


@pytest.mark.django_db
def test_a_viewer_is_refused_and_nothing_is_sent(bob_client, charlie_client, simulator, sim_account):
    chosen = create(simulator, 2)
    fill(sim_account)

    for client in (bob_client, charlie_client):
        assert post(client, ids=ids_of(chosen)).status_code == 403
        assert post(client, filter="?q=" + TAG, expected="2").status_code == 403
        assert client.get(reverse("bulk_cancel_progress", args=["0" * 32])).status_code == 403
    assert upstream_cancels(simulator) == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_signed_out_goes_to_the_login_page(client, simulator, sim_account):
    chosen = create(simulator, 1)
    fill(sim_account)

    response = client.post(URL, {"ids": ids_of(chosen)})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
def test_csrf_token_is_required(alice, simulator, sim_account):
    chosen = create(simulator, 1)
    fill(sim_account)
    client = csrf_checked_client(alice)

    response = client.post(URL, {"ids": ids_of(chosen)}, headers=HTMX)

    assert response.status_code == 403
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
def test_get_is_not_allowed(alice_client):
    assert alice_client.get(URL).status_code == 405


@pytest.mark.django_db
def test_more_than_the_limit_is_refused(alice_client, simulator, sim_account):
    fill(sim_account)
    too_many = [f"sim/batch_{i:024x}" for i in range(bulk.MAX_IDS + 1)]

    response = post(alice_client, ids=too_many)

    assert response.status_code == 400
    assert f"At most {bulk.MAX_IDS}" in text(response)
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "value",
    ["sim", "sim/", "nobody/batch_abc123", "sim/batch_x/../y", "sim/file-abc", "sim/batch_notmirrored123"],
)
def test_malformed_or_unknown_ids_are_refused_before_anything_is_sent(
    alice_client, simulator, sim_account, value
):
    chosen = create(simulator, 1)
    fill(sim_account)

    response = post(alice_client, ids=[*ids_of(chosen), value])

    assert response.status_code == 400
    assert "Nothing was sent." in text(response)
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
def test_ids_and_filter_together_or_neither_are_refused(alice_client, simulator, sim_account):
    chosen = create(simulator, 1)
    fill(sim_account)

    assert post(alice_client, ids=ids_of(chosen), filter="", expected="1").status_code == 400
    assert post(alice_client).status_code == 400
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
def test_a_reason_over_the_limit_is_refused(alice_client, simulator, sim_account, settings):
    chosen = create(simulator, 1)
    fill(sim_account)

    response = post(alice_client, ids=ids_of(chosen), reason="x" * (settings.CANCEL_REASON_MAX_LENGTH + 1))

    assert response.status_code == 400
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
def test_an_echoed_id_is_escaped(alice_client, simulator, sim_account):
    fill(sim_account)

    response = post(alice_client, ids=["<script>alert(1)</script>"])

    assert response.status_code == 400
    assert "<script>" not in response.content.decode()
    assert "&lt;script&gt;" in response.content.decode()


# --- progress ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_progress_of_an_unknown_or_foreign_job(alice_client, alice, simulator, sim_account):
    gone = alice_client.get(reverse("bulk_cancel_progress", args=["f" * 32]))
    assert gone.status_code == 286  # expired: stop polling, say so
    assert "no longer available" in text(gone)

    from django.contrib.auth.models import Group, User

    dave = User.objects.create_user("dave", "dave@example.com", "dave-password-1")
    dave.groups.add(Group.objects.get(name="Operators"))
    chosen = create(simulator, 1)
    fill(sim_account)
    job = job_id_of(post(alice_client, ids=ids_of(chosen)))
    other = Client()
    other.force_login(dave)
    assert other.get(reverse("bulk_cancel_progress", args=[job])).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_in_production_the_job_runs_in_a_thread_and_the_panel_polls_until_done(
    alice, alice_client, simulator, sim_account, settings
):
    settings.BULK_CANCEL_INLINE = False
    settings.BULK_CANCEL_PAUSE = 0.05
    chosen = create(simulator, 3)
    fill(sim_account)

    response = post(alice_client, ids=ids_of(chosen))

    assert response.status_code == 200
    job = job_id_of(response)
    progress_url = reverse("bulk_cancel_progress", args=[job])
    assert f'hx-get="{progress_url}" hx-trigger="every 1s"' in response.content.decode()
    deadline = time.monotonic() + 15
    while True:
        progress = alice_client.get(progress_url, headers=HTMX)
        if progress.status_code == 286 or time.monotonic() > deadline:
            break
        assert progress.status_code == 200
        time.sleep(0.05)
    assert progress.status_code == 286
    assert "3 of 3 done" in text(progress)
    assert "hx-trigger" not in progress.content.decode()
    assert upstream_cancels(simulator) == 3
    assert AuditEntry.objects.filter(outcome="accepted").count() == 3


@pytest.mark.django_db
def test_without_htmx_the_answer_is_a_page(alice_client, simulator, sim_account):
    chosen = create(simulator, 1)
    fill(sim_account)

    response = alice_client.post(URL, {"ids": ids_of(chosen)})

    assert response.status_code == 200
    body = text(response)
    assert "<html" in body and "1 of 1 done" in body
