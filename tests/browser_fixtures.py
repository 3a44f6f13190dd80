"""Browser-test plumbing (a plugin listed in tests/conftest.py): pytest-playwright driving Debian's
Chromium against pytest-django's live_server, with the mirror kept fresh while the page polls.

The tests that use it live in tests/test_browser.py and are marked `browser`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest-playwright's sync API keeps an asyncio event loop running in the main thread for the whole
# session (greenlet-based). Django then takes every ORM call from that thread (the test body,
# fixtures, the transactional flush) for a call from async code and raises SynchronousOnlyOperation,
# although nothing here is async. This is the documented escape hatch. The one async path under
# test (tests/test_remote_user.py, through ASGI) runs the app's sync code in sync_to_async threads,
# where this check never applies, so the flag hides nothing there.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# pytest-playwright's fixtures that start its session-wide Playwright instance.
PLAYWRIGHT_FIXTURES = {"page", "context", "new_context", "browser", "browser_type", "playwright"}
# What records every console error, page error and CSP violation of a page (see `page_problems`).
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${where}`);
});
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    uses_playwright = [item for item in items if PLAYWRIGHT_FIXTURES & set(getattr(item, "fixturenames", ()))]
    if not os.path.exists(CHROMIUM):
        skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: apt-get install chromium (CI installs it)")
        for item in uses_playwright:
            item.add_marker(skip)
    # pytest-playwright's Playwright instance lives until the session ends, and a second
    # sync_playwright() in the same thread (tests/test_cancel.py starts its own) then fails with
    # "using Playwright Sync API inside the asyncio loop". Running these tests last avoids that.
    if uses_playwright:
        chosen = set(map(id, uses_playwright))
        items[:] = [item for item in items if id(item) not in chosen] + uses_playwright


@pytest.fixture(scope="session")
def browser_type_launch_args(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Debian's Chromium, not a Playwright download (`playwright install` cannot run here)."""
    return {
        "executable_path": CHROMIUM,
        "args": CHROMIUM_ARGS,
        "headless": not pytestconfig.getoption("--headed", default=False),
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's own, with a viewport wide enough for the list's twelve columns."""
    return {**browser_context_args, "viewport": {"width": 1600, "height": 1000}}


# --- helpers ---------------------------------------------------------------------------------


def wait_for_htmx(page: Any, timeout: float = 15_000) -> None:
    """Until no htmx request is in flight (htmx puts `htmx-request` on the requesting element)."""
    page.wait_for_function("() => !document.querySelector('.htmx-request')", timeout=timeout)


def login(page: Any, live_server: Any, username: str, password: str) -> None:
    """Through the real login form; lands on the batch list."""
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/batches/**")


@pytest.fixture
def screenshot(request: pytest.FixtureRequest, page: Any) -> Callable[[str], Path]:
    """`screenshot("step")` writes test-results/screenshots/<test name>-<step>.png (git-ignored)."""
    folder = request.config.rootpath / "test-results" / "screenshots"
    name = getattr(request.node, "originalname", request.node.name)
    for stale in folder.glob(f"{name}-*.png"):  # from an earlier run of this test
        stale.unlink(missing_ok=True)

    def take(step: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


class PageProblems:
    """Console errors, uncaught page errors and CSP violations of one page, across navigations."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.csp: list[str] = []
        page.add_init_script(CSP_RECORDER)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.console.append(f"page error: {error}"))

    def _on_console(self, message: Any) -> None:
        url = message.location.get("url", "")
        # Chromium asks for /favicon.ico on its own (the pages name no icon), and logs the 404.
        if message.type == "error" and not url.endswith("/favicon.ico"):
            self.console.append(f"console: {message.text} ({url})")

    def collect(self) -> list[str]:
        """Everything so far. Call it before leaving a page: its `window.__cspViolations` goes with it."""
        self.csp.extend(self.page.evaluate("() => (window.__cspViolations || []).splice(0)"))
        return self.console + [f"CSP: {v}" for v in self.csp]


@pytest.fixture
def page_problems(page: Any) -> PageProblems:
    """Records from the first navigation on; see PageProblems.collect."""
    return PageProblems(page)


@pytest.fixture
def migrated_data(transactional_db: None) -> None:
    """The rows migrations make (content types, permissions, the two role groups).

    A transactional test flushes every table; ensure_roles() puts back what the roles need.
    """
    from batches.auth import ensure_roles

    ensure_roles()


@pytest.fixture
def fresh_mirror(settings: Any, sim_account: Any) -> Iterator[Any]:
    """Fast polling, and the product's own on-demand refresh keeping the mirror fresh.

    The row and live fragments (and the pages) call `sync.refresh_stale_in_background`, which with
    SYNC_ON_DEMAND starts a background cycle whenever the mirror is older than REFRESH_INTERVAL, so
    the polling browser itself keeps the mirror in step with the simulator. One cycle first fills
    the mirror. At the end no new refresh may start, and the running ones are waited for, so none
    writes into the next test's database.
    """
    from batches.sync import run_cycle

    settings.POLL_INTERVAL = 1
    settings.REFRESH_INTERVAL = 0.5
    result = run_cycle(sim_account)
    assert result.ok, result.error
    settings.SYNC_ON_DEMAND = True
    yield sim_account
    settings.SYNC_ON_DEMAND = False
    for thread in threading.enumerate():
        if thread.name.startswith("sync-") and thread is not threading.current_thread():
            thread.join(timeout=15)


@pytest.fixture
def finishing_batch(simulator: Any, fresh_mirror: Any) -> Any:
    """A mirrored batch in progress that finishes on its own: 30 simulated seconds in progress,
    then 10 finalizing (the simulator's clock follows real time)."""
    from batches.models import Batch
    from batches.sync import run_cycle

    obj = simulator.create_batch(
        status="in_progress", total=200, in_progress_seconds=30, finalizing_seconds=10
    )
    assert run_cycle(fresh_mirror).ok
    return Batch.objects.get(account=fresh_mirror.name, batch_id=obj["id"])
