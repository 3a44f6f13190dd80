"""Shared fixtures: the named users and a dashboard account pointed at a live simulator.

alice is the operator, bob the viewer, charlie signed in but in neither group.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from batches import sync
from batches.accounts import Account
from batches.auth import ensure_roles

pytest_plugins = ["tests.sim_fixtures", "tests.browser_fixtures"]

SIM_KEY = "sk-sim-local"


@pytest.fixture(autouse=True)
def forget_process_state() -> None:
    """What would outlive the rows a test rolls back: the per-process "mirror fresh until"
    shortcut and sync banners, and the cache (claims such as `batches:refresh:<pk>` name primary keys that the
    next test may reuse)."""
    from django.core.cache import cache

    from batches.views import monitor

    sync._fresh_until.clear()
    monitor._banners.clear()
    cache.clear()


def _user(username: str, group: str | None) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", f"{username}-password-1")
    # Transactional tests flush the tables, and with them the groups the migration made.
    ensure_roles()
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def alice(db: None) -> User:
    return _user("alice", "Operators")


@pytest.fixture
def bob(db: None) -> User:
    return _user("bob", "Viewers")


@pytest.fixture
def charlie(db: None) -> User:
    return _user("charlie", None)


def csrf_checked_client(user: User) -> Client:
    """Signed in as `user`, with CSRF checks on (the test client skips them by default)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def signed_in_client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice: User) -> Client:
    return signed_in_client(alice)


@pytest.fixture
def bob_client(bob: User) -> Client:
    return signed_in_client(bob)


@pytest.fixture
def charlie_client(charlie: User) -> Client:
    return signed_in_client(charlie)


@pytest.fixture
def offline_accounts(settings):  # type: ignore[no-untyped-def]
    """Two accounts, "sim" and "eu", whose upstream is never reached."""
    from tests.factories import offline_account

    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account("sim"), "eu": offline_account("eu")}
    return settings.UPSTREAM_ACCOUNTS


@pytest.fixture
def sim_account(sim_server, settings) -> Iterator[Account]:  # type: ignore[no-untyped-def]
    """The dashboard's only account, "sim", pointed at the live simulator over a real socket."""
    account = Account(name="sim", api_key=SIM_KEY, base_url=sim_server.url.removesuffix("/v1"))
    settings.UPSTREAM_ACCOUNTS = {"sim": account}
    settings.UPSTREAM_MAX_RETRIES = 0
    settings.UPSTREAM_READ_TIMEOUT = 5.0
    yield account


# --- The API key never leaks: a guard over the whole test run ---------------------------------
#
# Every response a test client receives (body and headers), every test's captured stdout, stderr
# and log, and every failure text are searched for the keys the run knows: the fixed test keys and
# every key that was configured in settings.UPSTREAM_ACCOUNTS while a response was checked. A hit
# fails the run at the end, naming where (never the key itself). Test code may hold keys in
# request headers and Account objects: only what the dashboard produces is searched.

import contextlib  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

KNOWN_SECRETS = frozenset({SIM_KEY, "sk-test-SUPERSECRET-0123456789"})
# Shorter "keys" (some tests use "sk-test") would match ordinary text.
MIN_SECRET_LENGTH = 8
_seen_secrets: set[str] = set(KNOWN_SECRETS)
leaks: list[str] = []


def configured_secrets() -> set[str]:
    """The fixed test keys, every account key seen so far, and the accounts configured now."""
    from django.conf import settings

    try:
        accounts = dict(getattr(settings, "UPSTREAM_ACCOUNTS", {}) or {})
    except Exception:  # settings not configured (yet): the keys seen so far still count
        accounts = {}
    for account in accounts.values():
        key = getattr(account, "api_key", "")
        if isinstance(key, str) and len(key) >= MIN_SECRET_LENGTH:
            _seen_secrets.add(key)
    return set(_seen_secrets)


def find_secrets(text: str, secrets: Iterable[str] | None = None) -> list[str]:
    """The secrets that occur in `text` (a masked echo such as `sk-si***al` is not the key)."""
    candidates = configured_secrets() if secrets is None else secrets
    return sorted(secret for secret in candidates if secret and secret in text)


def mask(secret: str) -> str:
    return f"{secret[:5]}***{secret[-2:]}" if len(secret) >= 8 else "***"


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "(outside a test)").rsplit(" ", 1)[0]


def response_leaks(response: Any, where: str) -> list[str]:
    """Findings for one response: its headers always, its body unless it is streamed."""
    parts = [f"{name}: {value}" for name, value in response.items()]
    if not getattr(response, "streaming", False):
        parts.append(bytes(response.content).decode("utf-8", "replace"))
    return [f"{where}: the response holds the key {mask(s)}" for s in find_secrets("\n".join(parts))]


def report_leaks(report: Any) -> list[str]:
    """Findings for one test report: captured stdout/stderr/log sections and the failure text."""
    findings = []
    for title, content in getattr(report, "sections", []):
        findings += [f"{report.nodeid} ({title}): holds the key {mask(s)}" for s in find_secrets(content)]
    if getattr(report, "longrepr", None) is not None:
        text = report.longreprtext
        findings += [f"{report.nodeid} (failure text): holds the key {mask(s)}" for s in find_secrets(text)]
    return findings


def _install_response_guard() -> None:
    from django.test import client as test_client

    original = test_client.Client.request
    if getattr(original, "secret_guard", False):
        return

    @functools.wraps(original)
    def request(self: Any, **environ: Any) -> Any:
        response = original(self, **environ)
        where = f"{_current_test()}: {environ.get('REQUEST_METHOD', '?')} {environ.get('PATH_INFO', '?')}"
        leaks.extend(response_leaks(response, where))
        return response

    request.secret_guard = True  # type: ignore[attr-defined]
    test_client.Client.request = request  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    _install_response_guard()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    leaks.extend(report_leaks(report))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not leaks:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["An API key appeared where it must never be:", *dict.fromkeys(leaks)]
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "API KEY LEAK", red=True, bold=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- Child processes: manage.py with the real settings, a temp SQLite database ----------------

REPO = Path(__file__).resolve().parent.parent
CHILD_SECRET_KEY = "child-process-secret-key-for-tests-only-0123456789abcdef"


def child_env(**extra: str) -> dict[str, str]:
    """An environment built from scratch for a child `manage.py` on the real settings module:
    nothing inherited could point it at this run's database or cache (DATABASE_URL, CACHE_URL)."""
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ}
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        SECRET_KEY=CHILD_SECRET_KEY,
        PYTHONUNBUFFERED="1",
        STATIC_MANIFEST="false",
        SYNC_ON_DEMAND="false",
    )
    env.update(extra)
    return env


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_manage(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=10)


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per run; tests copy it (migrating takes seconds)."""
    path = tmp_path_factory.mktemp("child-db") / "template.sqlite3"
    done = manage("migrate", "--noinput", env=child_env(DATABASE_URL=sqlite_url(path)), timeout=120)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def child_db(migrated_sqlite_template: Path, tmp_path: Path) -> Path:
    """A migrated SQLite database file of this test's own, for child processes."""
    path = tmp_path / "child.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{migrated_sqlite_template}{suffix}")
        if source.exists():
            shutil.copy(source, f"{path}{suffix}")
    return path


@dataclass
class ChildSimulator:
    process: subprocess.Popen[str]
    url: str  # the API base, http://127.0.0.1:PORT/v1

    @property
    def root_url(self) -> str:
        return self.url.removesuffix("/v1")


@pytest.fixture
def start_child_simulator(tmp_path: Path) -> Iterator[Callable[..., ChildSimulator]]:
    """`manage.py simulate_upstream` in a process of its own, on a free port; stopped at the end."""
    started: list[ChildSimulator] = []

    def start(*, batches: int = 50) -> ChildSimulator:
        env = child_env(DATABASE_URL=sqlite_url(tmp_path / "simulator-unused.sqlite3"))
        process = start_manage(
            "simulate_upstream", "--port", "0", "--batches", str(batches), "--arrival-interval", "0",
            env=env,
        )  # fmt: skip
        assert process.stdout is not None
        first_line = process.stdout.readline()
        url = first_line.rsplit(" at ", 1)[-1].strip()
        if not url.startswith("http://127.0.0.1:"):
            stop_process(process)
            raise AssertionError(f"the simulator did not start: {first_line!r}")
        child = ChildSimulator(process, url)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)
        stop_process(child.process)
