"""Accessibility: axe-core (bundled by axe-playwright-python, nothing downloaded) on the login, list,
detail and audit pages, as alice, in the light and the dark theme, and on the open dialogs. No
violation of impact "serious" or "critical" may remain."""

from __future__ import annotations

from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.test import Client
from django.urls import reverse
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
BLOCKING = {"serious", "critical"}


@pytest.fixture(scope="module")
def axe() -> Axe:
    return Axe()


@pytest.fixture
def simulator(sim_clock: SimClock) -> Simulator:
    return Simulator(batches=30, seed=11, clock=sim_clock, cancel_delay=30)


@pytest.fixture
def world(simulator, fresh_mirror, alice) -> dict[str, Batch]:  # type: ignore[no-untyped-def]
    """A running batch, a failed one with errors, and an audit trail with an accepted and a refused cancel."""
    running = simulator.create_batch(status="in_progress", total=5000, in_progress_seconds=3600)
    other = simulator.create_batch(status="in_progress", total=100, in_progress_seconds=3600)
    done = simulator.create_batch(status="completed", total=10)
    assert run_cycle(fresh_mirror).ok
    client = Client()
    client.force_login(alice)
    other_batch = Batch.objects.get(batch_id=other["id"])
    client.post(
        reverse("batch_cancel", args=["sim", other["id"]]),
        {"reason": "test run"},
        headers={"HX-Request": "true"},
    )
    done_batch = Batch.objects.get(batch_id=done["id"])
    Batch.objects.filter(pk=done_batch.pk).update(status="in_progress")  # the mirror is behind: a refusal
    client.post(
        reverse("batch_cancel", args=["sim", done["id"]]), {"reason": "late"}, headers={"HX-Request": "true"}
    )
    # The audit page below is scanned with one entry of each kind.
    assert sorted(AuditEntry.objects.values_list("outcome", flat=True)) == ["accepted", "refused"]
    return {"running": Batch.objects.get(batch_id=running["id"]), "cancelled": other_batch}


def serious(axe: Axe, page: Page) -> list[str]:
    results = axe.run(page)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") not in BLOCKING:
            continue
        targets = [" ".join(map(str, node.get("target", []))) for node in violation.get("nodes", [])][:5]
        found.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return found


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_pages_have_no_serious_accessibility_violations(
    page: Page, live_server: Any, axe: Axe, world: dict[str, Batch], scheme: str, page_problems: Any
) -> None:
    page.emulate_media(color_scheme=scheme)  # the theme follows the system setting by default
    problems: dict[str, list[str]] = {}

    page.goto(f"{live_server.url}/login/")
    expect(page.locator("html")).to_have_attribute("data-theme", scheme)
    problems["login"] = serious(axe, page)

    login(page, live_server, "alice", "alice-password-1")
    expect(page.locator(f"#batch-row-{world['running'].pk} .badge")).to_be_visible(timeout=WAIT)
    wait_for_htmx(page)
    page.locator(f"#batch-row-{world['running'].pk}").get_by_role("checkbox").check()
    problems["list"] = serious(axe, page)

    page.get_by_role("button", name="Cancel 1 selected").click()
    expect(page.locator("#bulk-dialog")).to_be_visible()
    problems["list, bulk dialog"] = serious(axe, page)
    page.keyboard.press("Escape")
    page.locator(f"#batch-row-{world['running'].pk}").get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator("#cancel-dialog")).to_be_visible()
    problems["list, cancel dialog"] = serious(axe, page)
    page.keyboard.press("Escape")
    page.locator("h1").click()
    page.keyboard.press("?")
    expect(page.locator("#shortcuts-dialog")).to_be_visible()
    problems["list, shortcuts"] = serious(axe, page)
    page.keyboard.press("Escape")

    for name, batch in world.items():
        page.goto(live_server.url + reverse("batch_detail", args=[batch.account, batch.batch_id]))
        expect(page.locator("#batch-live .badge")).to_be_visible(timeout=WAIT)
        wait_for_htmx(page)
        problems[f"detail ({name})"] = serious(axe, page)

    page.goto(live_server.url + reverse("audit_list"))
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    problems["audit"] = serious(axe, page)

    found = {where: issues for where, issues in problems.items() if issues}
    assert found == {}, "\n".join(f"{where}: {issue}" for where, issues in found.items() for issue in issues)
    assert page_problems.collect() == []
