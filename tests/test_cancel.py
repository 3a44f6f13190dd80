"""Cancelling as a team, against the live simulator: one upstream cancel per batch, every attempt
audited, refusals and failures shown in place with the upstream's own words and request id."""

from __future__ import annotations

import datetime as dt
import html
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches.audit import verify_chain
from batches.models import AuditEntry, Batch
from batches.simulator import Fault
from batches.sync import run_cycle, store_batches
from tests.conftest import csrf_checked_client
from tests.factories import upstream_cancels

HTMX = {"HX-Request": "true"}


def mirror(simulator: Any, **overrides: Any) -> Batch:
    """A batch created in the simulator and stored in the mirror, as a sync would."""
    obj = simulator.create_batch(**{"status": "in_progress", "total": 100, **overrides})
    store_batches("sim", [obj])
    return Batch.objects.get(account="sim", batch_id=obj["id"])


def cancel_url(batch: Batch) -> str:
    return reverse("batch_cancel", args=[batch.account, batch.batch_id])


def post_cancel(client: Client, batch: Batch, *, htmx: bool = True, **data: Any) -> Any:
    return client.post(
        cancel_url(batch),
        {"where": "row", **data},
        headers=HTMX if htmx else {},
        REMOTE_ADDR="203.0.113.7",
        HTTP_USER_AGENT="Mozilla/5.0 (test)",
    )


def text(response: Any) -> str:
    return html.unescape(response.content.decode())


@pytest.fixture
def running(simulator: Any, sim_account: Any) -> Batch:
    return mirror(simulator)


# --- the happy path ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_goes_upstream_once_and_is_audited_with_who_why_and_where(
    alice, alice_client, simulator, running
):
    response = post_cancel(alice_client, running, reason="wrong prompt file")

    assert response.status_code == 200
    assert upstream_cancels(simulator) == 1
    running.refresh_from_db()
    assert running.status == "cancelling"
    assert simulator.get_batch(running.batch_id)["status"] == "cancelling"
    entry = AuditEntry.objects.get()
    assert (entry.event, entry.outcome) == ("cancel", "accepted")
    assert entry.actor == alice
    assert (entry.actor_username, entry.actor_email) == ("alice", "alice@example.com")
    assert entry.reason == "wrong prompt file"
    assert entry.client_ip == "203.0.113.7"
    assert entry.user_agent == "Mozilla/5.0 (test)"
    assert (entry.status_before, entry.status_after) == ("in_progress", "cancelling")
    assert entry.http_status is None and entry.request_id == ""
    # The row comes back, still polling (cancelling is not terminal), without a Cancel button.
    body = text(response)
    assert f'id="batch-row-{running.pk}"' in body
    assert "hx-trigger" in body
    assert "data-cancel-url" not in body
    assert "Cancel accepted" in body
    assert verify_chain().ok


@pytest.mark.django_db
def test_cancelled_batch_gets_a_reached_entry_after_the_next_sync(
    alice_client, simulator, sim_clock, sim_account, running, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        post_cancel(alice_client, running)

    sim_clock.advance(simulator.cancel_delay + 1)
    # The status signal is sent after the sync's commit.
    with django_capture_on_commit_callbacks(execute=True):
        assert run_cycle(sim_account).ok

    running.refresh_from_db()
    assert running.status == "cancelled"
    reached = AuditEntry.objects.get(event="reached")
    assert reached.outcome == "observed"
    assert (reached.status_before, reached.status_after) == ("cancelling", "cancelled")
    assert reached.observed_at is not None
    # Neither the dashboard's own cancel nor its completion counts as "outside".
    assert not AuditEntry.objects.filter(event="outside").exists()
    assert AuditEntry.objects.count() == 2
    assert verify_chain().ok


@pytest.mark.django_db
def test_detail_page_cancel_answers_with_the_live_panel(alice_client, simulator, running):
    response = post_cancel(alice_client, running, where="detail")

    assert response.status_code == 200
    assert 'id="batch-live"' in text(response)
    assert upstream_cancels(simulator) == 1


@pytest.mark.django_db
def test_without_javascript_the_cancel_redirects_to_the_batch_with_a_message(
    alice_client, simulator, running
):
    response = post_cancel(alice_client, running, htmx=False)

    assert response.status_code == 302
    assert response["Location"] == reverse("batch_detail", args=["sim", running.batch_id])
    page = alice_client.get(response["Location"])
    assert "Cancel accepted" in text(page)
    assert upstream_cancels(simulator) == 1


@pytest.mark.django_db
def test_client_ip_comes_from_the_configured_proxy_header_only(alice_client, simulator, running, settings):
    settings.CLIENT_IP_HEADER = "HTTP_X_FORWARDED_FOR"

    alice_client.post(
        cancel_url(running), {"where": "row"}, headers={**HTMX, "X-Forwarded-For": "198.51.100.9, 10.0.0.1"}
    )

    assert AuditEntry.objects.get().client_ip == "198.51.100.9"


@pytest.mark.django_db
def test_proxy_header_is_ignored_unless_configured(alice_client, simulator, running):
    alice_client.post(
        cancel_url(running), {"where": "row"}, headers={**HTMX, "X-Forwarded-For": "198.51.100.9"}
    )

    assert AuditEntry.objects.get().client_ip == "127.0.0.1"


@pytest.mark.django_db
def test_user_agent_is_truncated_to_400_characters(alice_client, simulator, running):
    alice_client.post(cancel_url(running), {"where": "row"}, headers=HTMX, HTTP_USER_AGENT="x" * 1000)

    assert AuditEntry.objects.get().user_agent == "x" * 400


# --- refusals and failures -----------------------------------------------------------------------


@pytest.mark.django_db
def test_conflict_for_a_batch_that_already_completed_is_shown_and_the_mirror_refreshed(
    alice_client, simulator, sim_account
):
    done = simulator.create_batch(status="completed", total=10)
    # The mirror is behind: it still thinks the batch runs.
    stale = {**done, "status": "in_progress", "completed_at": None, "finalizing_at": None}
    store_batches("sim", [stale])
    batch = Batch.objects.get(batch_id=done["id"])

    response = post_cancel(alice_client, batch, reason="too slow")

    assert response.status_code == 200
    body = text(response)
    entry = AuditEntry.objects.get()
    assert (entry.event, entry.outcome, entry.http_status) == ("cancel", "refused", 409)
    assert entry.error_message == "Cannot cancel a batch with status 'completed'."
    assert entry.request_id.startswith("req_")
    assert (entry.status_before, entry.status_after) == ("in_progress", "completed")
    assert "HTTP 409" in body
    assert "Cannot cancel a batch with status 'completed'." in body
    assert entry.request_id in body
    batch.refresh_from_db()
    assert batch.status == "completed"
    assert batch.cancel_requested_at is None and batch.cancel_requested_by == ""
    assert upstream_cancels(simulator) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "title"),
    [(401, "Authentication failed"), (429, "Rate limited"), (500, "Upstream server error")],
)
def test_upstream_errors_are_shown_in_place_and_release_the_claim(
    alice_client, simulator, running, status, title
):
    simulator.add_fault(Fault(kind="status", status=status, path=r"/cancel$", method="POST", count=1))

    response = post_cancel(alice_client, running)

    assert response.status_code == 200
    body = text(response)
    entry = AuditEntry.objects.get()
    assert (entry.outcome, entry.http_status) == ("refused", status)
    assert title in body and f"HTTP {status}" in body
    assert entry.request_id and entry.request_id in body
    assert entry.error_message and entry.error_message in body
    running.refresh_from_db()
    assert running.status == "in_progress"
    assert running.cancel_requested_at is None
    # The claim is free: the button is back, and a retry goes upstream and succeeds.
    assert "data-cancel-url" in body
    post_cancel(alice_client, running)
    assert upstream_cancels(simulator) == 2
    assert AuditEntry.objects.filter(outcome="accepted").count() == 1


@pytest.mark.django_db
def test_a_timeout_is_recorded_as_an_error_with_the_outcome_unknown(
    alice_client, simulator, running, settings
):
    settings.UPSTREAM_READ_TIMEOUT = 0.3
    simulator.add_fault(Fault(kind="timeout", seconds=1.5, path=r"/cancel$", method="POST", count=1))

    response = post_cancel(alice_client, running)

    assert response.status_code == 200
    entry = AuditEntry.objects.get()
    assert (entry.outcome, entry.http_status, entry.error_type) == ("error", None, "timeout")
    assert "Upstream timed out" in text(response)
    running.refresh_from_db()
    assert running.cancel_requested_at is None


@pytest.mark.django_db
def test_reason_longer_than_the_limit_is_refused_before_anything_is_sent(
    alice_client, simulator, running, settings
):
    settings.CANCEL_REASON_MAX_LENGTH = 20

    response = post_cancel(alice_client, running, reason="x" * 21)

    assert response.status_code == 400
    assert "at most 20" in text(response)
    assert f'id="batch-row-{running.pk}"' in text(response)
    assert upstream_cancels(simulator) == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_reason_line_breaks_count_once_as_the_browser_counts_them(alice_client, simulator, running, settings):
    settings.CANCEL_REASON_MAX_LENGTH = 5

    response = post_cancel(alice_client, running, reason="ab\r\ncd")

    assert response.status_code == 200
    assert AuditEntry.objects.get().reason == "ab\ncd"


@pytest.mark.django_db
def test_csrf_token_in_the_htmx_header_is_accepted(alice, simulator, running):
    client = csrf_checked_client(alice)
    client.get(reverse("batch_list"))  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value

    response = client.post(cancel_url(running), {"where": "row"}, headers={**HTMX, "X-CSRFToken": token})

    assert response.status_code == 200
    assert upstream_cancels(simulator) == 1


@pytest.mark.django_db
def test_get_is_not_allowed(alice_client, simulator, running):
    assert alice_client.get(cancel_url(running)).status_code == 405
    assert upstream_cancels(simulator) == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("account", "batch_id"),
    [("sim", "batch_nope!"), ("sim", "not-a-batch"), ("sim", "batch_unknown123"), ("nope", "batch_abc")],
)
def test_malformed_or_unknown_ids_are_404_and_nothing_is_sent(
    alice_client, simulator, sim_account, account, batch_id
):
    response = alice_client.post(reverse("batch_cancel", args=[account, batch_id]), headers=HTMX)

    assert response.status_code == 404
    assert simulator.total_requests() == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_finished_batch_is_not_sent_upstream_again(alice_client, simulator, sim_account):
    batch = mirror(simulator, status="completed", total=5)

    response = post_cancel(alice_client, batch)

    assert response.status_code == 200
    assert "already completed" in text(response)
    assert upstream_cancels(simulator) == 0


# --- one cancel per batch ------------------------------------------------------------------------


@pytest.mark.django_db
def test_second_cancel_learns_who_cancelled_and_sends_nothing(alice_client, alice, simulator, running):
    post_cancel(alice_client, running, reason="first")

    response = post_cancel(alice_client, running, reason="second")

    assert response.status_code == 200
    assert "Cancel requested by alice at " in text(response)
    assert upstream_cancels(simulator) == 1
    outcomes = list(AuditEntry.objects.order_by("seq").values_list("outcome", "reason"))
    assert outcomes == [("accepted", "first"), ("in_flight", "second")]


@pytest.mark.django_db
def test_a_claimed_batch_shows_who_claimed_it_instead_of_the_button(alice_client, simulator, running):
    Batch.objects.filter(pk=running.pk).update(
        cancel_requested_by="carol", cancel_requested_at=timezone.now()
    )

    response = post_cancel(alice_client, running)

    assert "Cancel requested by carol at " in text(response)
    assert "cancel requested by <strong>carol</strong>" in text(response)
    assert "data-cancel-url" not in text(response)
    assert upstream_cancels(simulator) == 0
    assert AuditEntry.objects.get().outcome == "in_flight"


@pytest.mark.django_db
def test_an_abandoned_claim_can_be_taken_over(alice_client, simulator, running):
    long_ago = timezone.now() - dt.timedelta(hours=1)
    Batch.objects.filter(pk=running.pk).update(cancel_requested_by="carol", cancel_requested_at=long_ago)

    post_cancel(alice_client, running)

    assert upstream_cancels(simulator) == 1
    assert AuditEntry.objects.get().outcome == "accepted"


@pytest.mark.django_db(transaction=True)
def test_twenty_simultaneous_cancels_send_one_upstream_cancel_and_audit_all(alice, simulator, running):
    # A slow upstream keeps the winner's claim in flight while the others arrive.
    simulator.add_fault(Fault(kind="latency", seconds=0.5, path=r"/cancel$", method="POST"))
    clients = []
    for _ in range(20):
        client = Client()
        client.force_login(alice)
        clients.append(client)
    barrier = threading.Barrier(len(clients))
    statuses: list[int] = []
    failures: list[BaseException] = []

    def click(client: Client) -> None:
        try:
            barrier.wait(timeout=10)
            statuses.append(post_cancel(client, running).status_code)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=click, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not failures, failures
    assert statuses == [200] * 20
    assert upstream_cancels(simulator) == 1
    entries = list(AuditEntry.objects.order_by("seq").values_list("outcome", flat=True))
    assert len(entries) == 20
    assert entries.count("accepted") == 1
    assert entries.count("in_flight") == 19
    result = verify_chain()
    assert result.ok and result.checked == 20
    running.refresh_from_db()
    assert running.status == "cancelling"


# --- the dialog, in a real browser ---------------------------------------------------------------


@dataclass
class Browser:
    page: Any
    expect: Any
    url: str
    problems: list[str]


@pytest.fixture
def alice_browser(live_server: Any, alice: Any, monkeypatch: Any) -> Iterator[Browser]:
    """Chromium signed in as alice; console errors (CSP violations included) land in `problems`."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no system Chromium")
    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test stay sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    client = Client()
    client.force_login(alice)
    name = django_settings.SESSION_COOKIE_NAME
    cookie = {"name": name, "value": client.cookies[name].value, "url": live_server.url}
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and "favicon" not in message.location.get("url", ""):
            problems.append(message.text)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context()
        context.add_cookies([cookie])
        page = context.new_page()
        page.on("console", on_console)
        page.on("pageerror", lambda error: problems.append(str(error)))
        yield Browser(page, sync_api.expect, live_server.url, problems)
        browser.close()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_cancel_dialog_posts_once_and_swaps_the_row_in_a_browser(alice_browser, simulator, running):
    page, expect = alice_browser.page, alice_browser.expect
    simulator.add_fault(Fault(kind="latency", seconds=0.5, path=r"/cancel$", method="POST"))
    page.goto(alice_browser.url + reverse("batch_list"))

    row = page.locator(f"#batch-row-{running.pk}")
    row.locator("[data-cancel-url]").click()
    dialog = page.locator("#cancel-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-cancel-batch-id]")).to_have_text(running.batch_id)
    # Keep running closes it and sends nothing.
    dialog.locator("[data-cancel-keep]").click()
    expect(dialog).to_be_hidden()
    assert upstream_cancels(simulator) == 0

    row.locator("[data-cancel-url]").click()
    dialog.locator("#cancel-reason").fill("from the browser")
    expect(dialog.locator("[data-cancel-count]")).to_have_text("16")
    confirm = dialog.locator("[data-cancel-confirm]")
    confirm.click()
    # Disabled while the request runs: a double click cannot send a second one.
    expect(confirm).to_be_disabled()
    confirm.click(force=True)
    expect(row.locator(".cancel-notice")).to_contain_text("Cancel accepted", timeout=10_000)
    expect(dialog).to_be_hidden()
    expect(row.locator(".badge")).to_have_text("cancelling")

    assert upstream_cancels(simulator) == 1
    entry = AuditEntry.objects.get()
    assert (entry.outcome, entry.reason) == ("accepted", "from the browser")
    assert not alice_browser.problems, alice_browser.problems


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_upstream_error_stays_readable_across_polls_in_a_browser(alice_browser, simulator, running, settings):
    page, expect = alice_browser.page, alice_browser.expect
    settings.POLL_INTERVAL = 1
    simulator.add_fault(Fault(kind="status", status=429, path=r"/cancel$", method="POST", count=1))
    page.goto(alice_browser.url + reverse("batch_detail", args=[running.account, running.batch_id]))

    live = page.locator("#batch-live")
    live.locator("[data-cancel-url]").click()
    page.locator("#cancel-dialog [data-cancel-confirm]").click()
    error = live.locator(".cancel-error")
    expect(error).to_contain_text("Rate limited")
    expect(error).to_contain_text("HTTP 429")
    request_id = AuditEntry.objects.get().request_id
    expect(error).to_contain_text(request_id)
    # Two polls later the panel was re-rendered, and the error is still there to be read.
    for _ in range(2):
        with page.expect_response(lambda response: urlsplit(response.url).path.endswith("/live/")):
            pass
    expect(live.locator(".cancel-error")).to_contain_text(request_id)
    live.locator("[data-cancel-dismiss]").click()
    expect(live.locator(".cancel-error")).to_have_count(0)
    # The claim was released: the button is back.
    expect(live.locator("[data-cancel-url]")).to_be_visible()

    assert upstream_cancels(simulator) == 1
    assert not alice_browser.problems, alice_browser.problems
