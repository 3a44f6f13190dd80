"""Operator extras in a real browser (Debian's Chromium, see tests/browser_fixtures.py): the bulk
cancel dialog and its exact count, keyboard shortcuts, the dark theme and its toggle, and status
changes read out through the aria-live region. Every page stays free of CSP violations."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from batches.models import AuditEntry, Batch
from batches.simulator import SimClock, Simulator
from batches.sync import run_cycle
from tests.browser_fixtures import login, wait_for_htmx

# migrated_data (tests/browser_fixtures.py): the permissions the role groups need, even after a
# transactional test flushed them away.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("migrated_data"),
]

WAIT = 15_000
TAG = "bulk-browser-3"
CANCEL_UPSTREAM = "POST /batches/{id}/cancel"
DARK_BG = "rgb(15, 20, 27)"  # --bg of the dark theme
LIGHT_BG = "rgb(247, 248, 250)"


@pytest.fixture
def simulator(sim_clock: SimClock) -> Simulator:
    return Simulator(batches=30, seed=11, clock=sim_clock, cancel_delay=30)


@pytest.fixture
def tagged(simulator, fresh_mirror, settings) -> list[Batch]:  # type: ignore[no-untyped-def]
    """Three running batches that only the search `TAG` finds, in the mirror."""
    settings.BULK_CANCEL_INLINE = True
    settings.BULK_CANCEL_PAUSE = 0
    ids = [
        simulator.create_batch(
            status="in_progress", total=5000, in_progress_seconds=3600, metadata={"run": TAG}
        )["id"]
        for _ in range(3)
    ]
    assert run_cycle(fresh_mirror).ok
    return list(Batch.objects.filter(batch_id__in=ids).order_by("-created_at", "-id"))


def test_bulk_cancel_dialog_states_the_exact_count_and_the_job_reports_each_batch(
    page: Page, live_server, alice, tagged, simulator, page_problems, screenshot
):  # type: ignore[no-untyped-def]
    login(page, live_server, "alice", "alice-password-1")
    page.goto(f"{live_server.url}/batches/?q={TAG}")
    everything = page.get_by_role("button", name="Cancel all 3 active batches matching this filter")
    expect(everything).to_be_visible(timeout=WAIT)
    dialog = page.locator("#bulk-dialog")

    everything.click()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text("Cancel 3 batches?")
    expect(dialog.get_by_role("button", name="Cancel 3 batches")).to_be_enabled()
    screenshot("filter-dialog")
    dialog.get_by_role("button", name="Keep running").click()
    expect(dialog).to_be_hidden()

    # Two rows picked by hand; the selection survives the rows' polling.
    expect(page.locator("[data-bulk-open=selected]")).to_be_hidden()  # nothing picked yet
    for batch in tagged[:2]:
        page.locator(f"#batch-row-{batch.pk}").get_by_role("checkbox").check()
    selected = page.get_by_role("button", name="Cancel 2 selected")
    expect(selected).to_be_visible()
    with page.expect_response(  # a re-render (200), not a poll that found nothing new (204)
        lambda r: urlsplit(r.url).path.endswith(f"/{tagged[0].batch_id}/row/") and r.status == 200,
        timeout=WAIT,
    ):
        pass
    wait_for_htmx(page)
    expect(page.locator(f"#batch-row-{tagged[0].pk}").get_by_role("checkbox")).to_be_checked()
    expect(page.locator("input[data-bulk-all]")).to_have_js_property("indeterminate", True)
    selected.click()
    expect(dialog.get_by_role("heading")).to_have_text("Cancel 2 batches?")
    expect(dialog.locator("[data-bulk-list] li")).to_have_text([b.batch_id for b in tagged[:2]])
    dialog.get_by_label("Reason").fill("wrong template <b>v3</b>")
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 0
    dialog.get_by_role("button", name="Cancel 2 batches").click()
    expect(dialog).to_be_hidden(timeout=WAIT)
    panel = page.locator("#bulk-progress")
    expect(panel).to_contain_text("2 of 2 done", timeout=WAIT)
    expect(panel.locator(".bulk-item .outcome")).to_have_text(["Accepted", "Accepted"])
    screenshot("progress")
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 2
    assert sorted(e.reason for e in AuditEntry.objects.all()) == ["wrong template <b>v3</b>"] * 2

    # The filter's count is stale now (3 on the button, 1 left): the dialog says so and sends nothing.
    everything.click()
    expect(dialog.get_by_role("heading")).to_have_text("Cancel 3 batches?")
    dialog.get_by_role("button", name="Cancel 3 batches").click()
    expect(dialog.locator("[data-bulk-problem]")).to_contain_text("1 can be cancelled now, not 3")
    expect(dialog.get_by_role("heading")).to_have_text("Cancel 1 batch?")
    expect(page.locator("[data-bulk-open=filter]")).to_have_text(
        "Cancel all 1 active batch matching this filter"
    )
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 2
    dialog.get_by_role("button", name="Cancel 1 batch").click()
    expect(dialog).to_be_hidden(timeout=WAIT)
    expect(panel).to_contain_text("1 of 1 done", timeout=WAIT)
    assert simulator.stats().get(CANCEL_UPSTREAM, 0) == 3
    panel.get_by_role("button", name="Close").click()
    expect(panel).to_have_count(0)
    # Chromium logs the 409 it was answered; anything else (a CSP violation above all) fails the test.
    assert [p for p in page_problems.collect() if "status of 409 (Conflict)" not in p] == []


def test_viewer_has_no_bulk_controls(page: Page, live_server, bob, tagged):  # type: ignore[no-untyped-def]
    login(page, live_server, "bob", "bob-password-1")
    page.goto(f"{live_server.url}/batches/?q={TAG}")
    expect(page.locator(f"#batch-row-{tagged[0].pk}")).to_be_visible(timeout=WAIT)
    expect(page.locator("[data-bulk-open], [data-bulk-pick], #bulk-dialog")).to_have_count(0)


def test_keyboard_shortcuts(page: Page, live_server, bob, tagged, page_problems):  # type: ignore[no-untyped-def]
    login(page, live_server, "bob", "bob-password-1")
    rows = page.locator("table.batches tbody tr[id^='batch-row-']")
    expect(rows.first).to_be_visible(timeout=WAIT)
    search = page.get_by_role("searchbox")

    page.keyboard.press("/")
    expect(search).to_be_focused()
    page.keyboard.type("jk?")  # typed into the field, not taken as shortcuts
    expect(search).to_have_value("jk?")
    expect(page.locator("tr.kb-selected")).to_have_count(0)
    expect(page.locator("#shortcuts-dialog")).to_be_hidden()
    search.fill("")
    page.locator("h1").click()

    page.keyboard.press("j")
    expect(rows.nth(0)).to_have_class(re.compile(r"\bkb-selected\b"))
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class(re.compile(r"\bkb-selected\b"))
    expect(page.locator("tr.kb-selected")).to_have_count(1)
    page.keyboard.press("k")
    first = rows.nth(0)
    expect(first).to_have_class(re.compile(r"\bkb-selected\b"))
    first_id = first.get_attribute("id")
    href = first.locator("a").first.get_attribute("href")
    # A poll re-renders the selected row: the selection stays on it.
    with page.expect_response(
        lambda r: urlsplit(r.url).path == f"{href}row/" and r.status == 200, timeout=WAIT
    ):
        pass
    wait_for_htmx(page)
    expect(page.locator(f"#{first_id}")).to_have_class(re.compile(r"\bkb-selected\b"))

    page.keyboard.press("?")
    help_dialog = page.locator("#shortcuts-dialog")
    expect(help_dialog).to_be_visible()
    expect(help_dialog).to_contain_text("Focus the search box")
    page.keyboard.press("j")  # behind an open dialog: nothing moves
    expect(page.locator(f"#{first_id}")).to_have_class(re.compile(r"\bkb-selected\b"))
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    page.get_by_role("button", name="Shortcuts").click()
    expect(help_dialog).to_be_visible()
    help_dialog.get_by_role("button", name="Close").click()
    expect(help_dialog).to_be_hidden()

    page.locator("h1").click()  # the focus leaves the row's link: Enter still opens the selection
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}{href}")
    expect(page.locator("h1.batch-title")).to_be_visible()
    assert page_problems.collect() == []


def test_dark_theme_toggle_persists_across_reloads(page: Page, live_server, bob, fresh_mirror, page_problems):  # type: ignore[no-untyped-def]
    page.emulate_media(color_scheme="light")
    login(page, live_server, "bob", "bob-password-1")
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    # theme.js runs in <head>, before the first paint: not deferred, not async.
    script = page.locator("head script[src*='theme.js']")
    assert script.evaluate("s => !s.defer && !s.async") is True
    theme = page.get_by_label("Theme")
    expect(theme).to_have_value("system")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == LIGHT_BG

    theme.select_option("dark")
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == DARK_BG
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    expect(page.get_by_label("Theme")).to_have_value("dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == DARK_BG

    page.get_by_label("Theme").select_option("light")
    page.emulate_media(color_scheme="dark")
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")  # the choice beats the system setting

    # "System" follows the system setting, live.
    page.get_by_label("Theme").select_option("system")
    expect(html).to_have_attribute("data-theme", "dark")
    page.emulate_media(color_scheme="light")
    expect(html).to_have_attribute("data-theme", "light")
    page.reload()
    expect(page.get_by_label("Theme")).to_have_value("system")
    assert page_problems.collect() == []


def test_status_changes_are_announced(
    page: Page, live_server, bob, sim_clock, finishing_batch, page_problems
):  # type: ignore[no-untyped-def]
    batch = finishing_batch
    live = page.locator("#live-status")
    login(page, live_server, "bob", "bob-password-1")
    expect(live).to_have_attribute("aria-live", "polite")
    row = page.locator(f"#batch-row-{batch.pk}")
    expect(row.locator(".badge")).to_have_text("in_progress", timeout=WAIT)
    expect(live).to_have_text("")

    sim_clock.advance(31)
    expect(row.locator(".badge")).to_have_text("finalizing", timeout=WAIT)
    expect(live).to_have_text(f"Batch {batch.short_id}… is now finalizing", timeout=WAIT)

    page.goto(f"{live_server.url}/batches/{batch.account}/{batch.batch_id}/")
    expect(page.locator("#batch-live .badge")).to_have_text("finalizing", timeout=WAIT)
    sim_clock.advance(11)
    expect(page.locator("#batch-live .badge")).to_have_text("completed", timeout=WAIT)
    expect(page.locator("#live-status")).to_have_text(
        f"Batch {batch.short_id}… is now completed", timeout=WAIT
    )
    assert page_problems.collect() == []
