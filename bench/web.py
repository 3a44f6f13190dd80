"""HTTP from the benchmark: signed-in dashboard clients, simulated viewers, and the simulator's controls."""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

TIMEOUT = 30.0
STATUS_BADGE = re.compile(r'class="badge status-([a-z_]+)"')


@dataclass(frozen=True)
class Target:
    """One URL a viewer asks for; `kind` groups the samples in the report.

    `poll`: asked the way htmx polls a fragment, sending back the version (`hx-vals`) that the
    last fragment received carried, so an unchanged batch answers 204 with no body.
    """

    kind: str
    path: str
    htmx: bool = False
    poll: bool = False


@dataclass
class Sample:
    kind: str
    status: int  # 0 when no HTTP answer came (connection refused, timeout)
    seconds: float
    size: int
    started: float  # wall clock (time.time), to line requests up with the server's log
    error: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    @property
    def ok(self) -> bool:
        # 286 is htmx's "stop polling", the normal answer for a batch at a terminal status.
        return 200 <= self.status < 300


class LoginFailed(RuntimeError):
    pass


class DashboardClient:
    """One browser: its own cookies, signed in through the login form like a person."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.versions: dict[str, str] = {}  # poll path -> the version its fragment carries

    def login(self, username: str, password: str) -> None:
        self.session.get(self.base_url + "/login/", timeout=TIMEOUT).raise_for_status()
        response = self.session.post(
            self.base_url + "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": self.csrf_token},
            headers={"Referer": self.base_url + "/login/"},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        if response.status_code != 302 or "sessionid" not in self.session.cookies:
            raise LoginFailed(f"login as {username} answered HTTP {response.status_code}")

    @property
    def csrf_token(self) -> str:
        return self.session.cookies.get("csrftoken") or ""

    def get(self, target: Target) -> Sample:
        return self.fetch(target)[0]

    def fetch(self, target: Target) -> tuple[Sample, str]:
        """The sample and the body (a viewer keeps only the sample)."""
        headers = {"HX-Request": "true"} if target.htmx else {}
        version = self.versions.get(target.path) if target.poll else None
        params = {"v": version} if version else None
        sample, body = self._request(target.kind, "GET", target.path, headers=headers, params=params)
        if target.poll and sample.status == 200:
            found = POLL_VERSION.search(body)
            if found:
                self.versions[target.path] = found.group(1)
        return sample, body

    def post_htmx(self, kind: str, path: str, data: dict[str, str]) -> tuple[Sample, str]:
        """A form POST as htmx sends it: the CSRF token in a header, the page's URL as referer."""
        token = self.csrf_token
        headers = {"HX-Request": "true", "X-CSRFToken": token, "Referer": self.base_url + "/batches/"}
        return self._request(kind, "POST", path, headers=headers, data={**data, "csrfmiddlewaretoken": token})

    def _request(self, kind: str, method: str, path: str, **kwargs: Any) -> tuple[Sample, str]:
        wall, started = time.time(), time.perf_counter()
        try:
            response = self.session.request(
                method, self.base_url + path, allow_redirects=False, timeout=TIMEOUT, **kwargs
            )
        except requests.RequestException as exc:
            return Sample(kind, 0, time.perf_counter() - started, 0, wall, type(exc).__name__), ""
        seconds = time.perf_counter() - started
        return Sample(kind, response.status_code, seconds, len(response.content), wall), response.text


POLL_VERSION = re.compile(r"""hx-vals='\{"v": "([0-9a-f]+)"\}'""")


def badge_status(html: str) -> str:
    """The status a row or live fragment shows."""
    found = STATUS_BADGE.search(html)
    return found.group(1) if found else ""


# --- Simulated viewers --------------------------------------------------------------------------


@dataclass
class Viewer:
    client: DashboardClient
    targets: Sequence[Target]
    samples: list[Sample] = field(default_factory=list)


def run_viewers(
    viewers: Sequence[Viewer], seconds: float, think: float, at_deadline: Callable[[], None] | None = None
) -> None:
    """Every viewer asks for its targets in turn, pauses `think` seconds, and again, until time is up.

    The starts are spread over one round so the viewers do not march in lock step. `at_deadline`
    runs the moment time is up, before the requests still in flight are waited for.
    """
    stop = threading.Event()
    deadline = time.perf_counter() + seconds

    def loop(viewer: Viewer, offset: float) -> None:
        if stop.wait(offset):
            return
        while not stop.is_set():
            for target in viewer.targets:
                if stop.is_set() or time.perf_counter() >= deadline:
                    return
                viewer.samples.append(viewer.client.get(target))
            stop.wait(think)

    spread = max(think, 0.2)
    threads = [
        threading.Thread(target=loop, args=(v, spread * i / len(viewers)), daemon=True, name=f"viewer-{i}")
        for i, v in enumerate(viewers)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(max(0.0, deadline - time.perf_counter()))
        if at_deadline is not None:
            at_deadline()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT + 5)


# --- Numbers ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LatencySummary:
    count: int
    errors: int
    median: float
    p90: float
    p99: float
    size: int

    @classmethod
    def of(cls, samples: Iterable[Sample]) -> LatencySummary:
        samples = list(samples)
        ok = [s for s in samples if s.ok]
        times = [s.seconds for s in ok]
        return cls(
            count=len(samples),
            errors=len(samples) - len(ok),
            median=statistics.median(times) if times else math.nan,
            p90=percentile(times, 90),
            p99=percentile(times, 99),
            size=int(statistics.median([s.size for s in ok])) if ok else 0,
        )


# --- The simulator's control routes (never counted in its stats) ---------------------------------


class SimControl:
    def __init__(self, root_url: str) -> None:
        self.root_url = root_url
        self.session = requests.Session()

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        response = self.session.request(method, f"{self.root_url}/_sim{route}", json=body, timeout=TIMEOUT)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, int]:
        return dict(self._call("GET", "/stats")["stats"])

    def total(self) -> int:
        return int(self._call("GET", "/stats")["total"])

    def reset_stats(self) -> None:
        self._call("POST", "/stats/reset")

    def create_batch(self, **fields: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/batches", fields))

    def batch_ids(self) -> list[str]:
        """Every batch id, newest first, in the order the API lists them."""
        return list(self._call("GET", "/batches")["ids"])
