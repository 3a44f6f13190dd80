"""The dashboard in a real browser (Debian's Chromium through pytest-playwright), against live_server
and a live simulated upstream: cancel from the list, the viewer's view, the dialog across polls,
polling that stops at a terminal status, and pages free of console errors and CSP violations.

Screenshots go to test-results/screenshots/ (see tests/browser_fixtures.py).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from django.urls import reverse
from playwright.sync_api import Page, expect

from batches.models import AuditEntry, Batch, Session
from batches.simulator import SimClock, Simulator
from batches.sync import run_cycle
from tests.browser_fixtures import login, wait_for_htmx

# migrated_data: the permissions the role groups need, even after a test that flushed them away.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("migrated_data"),
]

# Simulated seconds from an accepted cancel to `cancelled`. The tests move the simulator's clock past
# it rather than wait, so `cancelling` stays on screen for as long as the test looks at it.
CANCEL_DELAY = 30
WAIT = 15_000  # ms: generous, for a loaded CI machine
CANCEL_UPSTREAM = "POST /batches/{id}/cancel"
ANY = re.compile(".*")


@pytest.fixture
def simulator(sim_clock: SimClock) -> Simulator:
    """A small world (one list page per sync) on the test's clock."""
    return Simulator(batches=30, seed=11, clock=sim_clock, cancel_delay=CANCEL_DELAY)


@pytest.fixture
def running(simulator, fresh_mirror) -> Batch:  # type: ignore[no-untyped-def]
    """A known in-progress batch with an hour to go, already in the mirror."""
    obj = simulator.create_batch(status="in_progress", total=5000, in_progress_seconds=3600)
    assert run_cycle(fresh_mirror).ok
    return Batch.objects.get(account="sim", batch_id=obj["id"])


def fragment_path(batch: Batch, name: str) -> str:
    return reverse(name, args=[batch.account, batch.batch_id])


def count_requests(page: Page, path: str, seconds: float) -> list[str]:
    """The requests the page sends to `path` during the next `seconds`."""
    seen: list[str] = []

    def on_request(request) -> None:  # type: ignore[no-untyped-def]
        if urlsplit(request.url).path.endswith(path):
            seen.append(request.url)

    page.on("request", on_request)
    page.wait_for_timeout(seconds * 1000)
    page.remove_listener("request", on_request)
    return seen


def wait_for_responses(page: Page, path: str, count: int, status: int | None = None) -> None:
    """Until the page has received `count` more responses from `path` (polls, at POLL_INTERVAL),
    of this `status` only when given (200: a re-render; a poll that finds nothing new gets 204)."""
    for _ in range(count):
        with page.expect_response(
            lambda r: urlsplit(r.url).path.endswith(path) and status in (None, r.status), timeout=WAIT
        ):
            pass


def expect_no_cancel_controls(page: Page) -> None:
    expect(page.locator("[data-cancel-url]")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.locator("#cancel-dialog")).to_have_count(0)


def main_frame_navigations(page: Page) -> list[str]:
    """From now on, every navigation of the page itself (a reload would show up here)."""
    seen: list[str] = []
    page.on("framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None)
    return seen


def test_operator_cancels_a_batch_from_the_list(
    page: Page, live_server, alice, running, simulator, sim_clock, screenshot
):  # type: ignore[no-untyped-def]
    reason = "Wrong prompt template <b>v2</b>: rerun tomorrow"
    login(page, live_server, "alice", "alice-password-1")
    row = page.locator(f"#batch-row-{running.pk}")
    expect(row.locator(".badge")).to_have_text("in_progress", timeout=WAIT)
    expect(page.locator(".who")).to_contain_text("alice · operator")
    wait_for_htmx(page)
    screenshot("list")

    navigations = main_frame_navigations(page)
    page.evaluate("window.__marker = 1")
    row.get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.locator("#cancel-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("[data-cancel-batch-id]")).to_have_text(running.batch_id)
    dialog.get_by_label("Reason").fill(reason)
    expect(dialog.locator("[data-cancel-count]")).to_have_text(str(len(reason)))
    screenshot("dialog-open")
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 0

    dialog.get_by_role("button", name="Cancel batch").click()
    expect(dialog).to_be_hidden(timeout=WAIT)
    expect(row.locator(".badge")).to_have_text("cancelling", timeout=WAIT)
    expect(row.locator(".cancel-notice")).to_contain_text("Cancel accepted")
    expect(row.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    assert page.evaluate("window.__marker") == 1
    screenshot("cancelling")

    # The upstream finishes the cancel; the row's own polling (and the on-demand sync) shows it.
    sim_clock.advance(CANCEL_DELAY + 1)
    expect(row.locator(".badge")).to_have_text("cancelled", timeout=WAIT)
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert navigations == [], f"the page navigated: {navigations}"
    # The terminal fragment came with 286 and carries no trigger: the row polls no more.
    expect(row).not_to_have_attribute("hx-trigger", ANY)
    polls = count_requests(page, fragment_path(running, "batch_row"), seconds=3)
    assert len(polls) <= 1, f"the cancelled row still polls: {polls}"
    expect(row.locator(".badge")).to_have_text("cancelled")
    screenshot("cancelled")
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 1

    page.get_by_role("navigation").get_by_role("link", name="Audit").click()
    page.wait_for_url("**/audit/")
    entry = page.locator("tr.audit-entry.event-cancel", has_text=running.batch_id)
    expect(entry).to_have_count(1)
    expect(entry.locator("td").nth(1)).to_contain_text("alice")
    expect(entry.get_by_role("link", name=running.batch_id)).to_be_visible()
    expect(entry.locator("td.reason")).to_have_text(reason)  # as text: the markup is escaped
    expect(entry.locator(".outcome")).to_have_text("Accepted")
    screenshot("audit")

    stored = AuditEntry.objects.get(event="cancel")
    assert (stored.actor_username, stored.batch_id, stored.reason, stored.outcome) == (
        "alice",
        running.batch_id,
        reason,
        "accepted",
    )


def test_viewer_sees_no_cancel_button(page: Page, live_server, bob, running, screenshot):  # type: ignore[no-untyped-def]
    login(page, live_server, "bob", "bob-password-1")
    expect(page.locator(".who")).to_contain_text("bob · viewer")
    row = page.locator(f"#batch-row-{running.pk}")
    expect(row.locator(".badge")).to_have_text("in_progress", timeout=WAIT)
    assert page.locator("tr[id^='batch-row-']").count() > 1
    # A polled re-render of the row must not bring the button either.
    wait_for_responses(page, fragment_path(running, "batch_row"), 1, status=200)
    wait_for_htmx(page)
    expect_no_cancel_controls(page)
    screenshot("list")

    page.goto(live_server.url + fragment_path(running, "batch_detail"))
    live = page.locator("#batch-live")
    expect(live.locator(".badge")).to_have_text("in_progress", timeout=WAIT)
    wait_for_responses(page, fragment_path(running, "batch_live"), 1, status=200)
    wait_for_htmx(page)
    expect_no_cancel_controls(page)
    screenshot("detail")


def open_detail_as_bob(page: Page, live_server, running: Batch) -> str:  # type: ignore[no-untyped-def]
    """Signed in as bob, on the running batch's page, its first polls answered; returns its URL."""
    login(page, live_server, "bob", "bob-password-1")
    detail = live_server.url + fragment_path(running, "batch_detail")
    page.goto(detail)
    expect(page.locator("#batch-live .badge")).to_have_text("in_progress", timeout=WAIT)
    wait_for_htmx(page)
    return detail


def test_a_page_whose_session_ended_goes_to_the_login_and_comes_back_after_it(
    page: Page, live_server, bob, running, sim_clock, screenshot
):  # type: ignore[no-untyped-def]
    detail = open_detail_as_bob(page, live_server, running)

    Session.objects.all().delete()  # signed out in another tab, or expired
    sim_clock.advance(60)  # the batch moves on: the next poll renders, which needs a session

    page.wait_for_url(f"{live_server.url}/login/?next=**", timeout=WAIT)
    expect(page.get_by_label("User name")).to_be_visible()
    expect(page.locator("#batch-live")).to_have_count(0)  # the login page is the page, not a fragment
    screenshot("login")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill("bob-password-1")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(detail, timeout=WAIT)
    expect(page.locator("#batch-live .badge")).to_have_text("in_progress", timeout=WAIT)


def test_a_page_whose_viewer_role_was_taken_away_says_so(page: Page, live_server, bob, running, sim_clock):  # type: ignore[no-untyped-def]
    detail = open_detail_as_bob(page, live_server, running)
    navigations = main_frame_navigations(page)

    bob.groups.clear()
    sim_clock.advance(60)  # the batch moves on: the next poll renders, which checks the role

    expect(page.get_by_role("heading", name="No access")).to_be_visible(timeout=WAIT)
    expect(page.locator(".who")).to_contain_text("bob · no role")
    assert navigations == [detail]  # reloaded in place, once
    expect(page.locator("#batch-live")).to_have_count(0)


def test_cancel_dialog_survives_polling(page: Page, live_server, alice, running, simulator, screenshot):  # type: ignore[no-untyped-def]
    login(page, live_server, "alice", "alice-password-1")
    row = page.locator(f"#batch-row-{running.pk}")
    expect(row.locator(".badge")).to_have_text("in_progress", timeout=WAIT)
    row_path = fragment_path(running, "batch_row")
    swaps: list[int] = []
    page.on("response", lambda r: swaps.append(r.status) if urlsplit(r.url).path.endswith(row_path) else None)

    row.get_by_role("button", name="Cancel", exact=True).click()
    dialog = page.locator("#cancel-dialog")
    expect(dialog).to_be_visible()
    reason = dialog.get_by_label("Reason")
    reason.fill("half a sentence, still typ")
    # At least two re-renders of the row behind the dialog (200s: a poll that finds nothing new
    # gets 204 and leaves the row alone), POLL_INTERVAL 1 s apart at the least.
    polls_before = len(swaps)
    wait_for_responses(page, row_path, 2, status=200)
    assert sum(1 for status in swaps[polls_before:] if status == 200) >= 2, swaps
    expect(dialog).to_be_visible()
    assert dialog.evaluate("d => d.open") is True
    expect(reason).to_have_value("half a sentence, still typ")
    expect(reason).to_be_focused()
    expect(dialog.locator("[data-cancel-batch-id]")).to_have_text(running.batch_id)
    screenshot("dialog-after-polls")

    dialog.get_by_role("button", name="Keep running").click()
    expect(dialog).to_be_hidden()
    wait_for_htmx(page)
    expect(row.locator(".badge")).to_have_text("in_progress")
    expect(row.get_by_role("button", name="Cancel", exact=True)).to_be_visible()
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 0
    assert not AuditEntry.objects.exists()


def test_detail_page_polls_until_the_batch_ends(
    page: Page, live_server, bob, sim_clock, finishing_batch, screenshot
):  # type: ignore[no-untyped-def]
    batch = finishing_batch
    login(page, live_server, "bob", "bob-password-1")
    page.goto(live_server.url + fragment_path(batch, "batch_detail"))
    live = page.locator("#batch-live")
    badge = live.locator(".badge")
    expect(badge).to_have_text("in_progress", timeout=WAIT)
    navigations = main_frame_navigations(page)
    page.evaluate("window.__marker = 1")

    # Simulated time jumps ahead (the batch would take 40 s); the page follows on its own.
    sim_clock.advance(31)
    expect(badge).to_have_text("finalizing", timeout=WAIT)
    sim_clock.advance(11)
    expect(badge).to_have_text("completed", timeout=WAIT)
    expect(live).to_contain_text("200 total")
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert navigations == [], f"the page navigated: {navigations}"

    expect(live).not_to_have_attribute("hx-trigger", ANY)
    polls = count_requests(page, fragment_path(batch, "batch_live"), seconds=3)
    assert len(polls) <= 1, f"the ended batch's page still polls: {polls}"
    expect(badge).to_have_text("completed")
    screenshot("completed")


def test_pages_have_no_console_errors_or_csp_violations(
    page: Page, live_server, alice, running, page_problems
):  # type: ignore[no-untyped-def]
    login(page, live_server, "alice", "alice-password-1")
    # htmx and app.js are allowed to run (a CSP mistake would block them).
    assert page.evaluate("typeof window.htmx") == "object"

    # The list, through two row polls and the dialog's open and close.
    wait_for_responses(page, fragment_path(running, "batch_row"), 2)
    page.locator(f"#batch-row-{running.pk}").get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#cancel-dialog")).to_be_visible()
    page.locator("#cancel-dialog").get_by_role("button", name="Keep running").click()
    expect(page.locator("#cancel-dialog")).to_be_hidden()
    wait_for_htmx(page)
    assert page_problems.collect() == []

    # The detail page, through two polls of its live part.
    page.goto(live_server.url + fragment_path(running, "batch_detail"))
    wait_for_responses(page, fragment_path(running, "batch_live"), 2)
    wait_for_htmx(page)
    assert page_problems.collect() == []

    page.goto(live_server.url + reverse("audit_list"))
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    assert page_problems.collect() == []
