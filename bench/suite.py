"""One benchmark run, start to end: the processes, the six benchmarks, the results."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import json
import math
import os
import re
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import OPERATOR, PAGE_SIZE, PG_DATABASE, SIM_KEY, VIEWER, Options, child_env, with_database
from bench.procs import PYTHON, REPO, Child, Supervisor, free_port, wait_for_http, wait_for_line
from bench.serverlog import Cycle, during_refresh, refresh_cycles
from bench.web import (
    DashboardClient,
    LatencySummary,
    Sample,
    SimControl,
    Target,
    Viewer,
    badge_status,
    run_viewers,
)

TERMINAL = ("completed", "failed", "expired", "cancelled")
LIST_FILTERED = "/batches/?status=completed&q=owner"
MANAGE = [PYTHON, "manage.py"]


@dataclass
class Results:
    """Everything measured, as plain data for the report."""

    options: Options
    database: str = "SQLite"
    cache: str = "local memory"
    started_at: float = field(default_factory=time.time)
    # Other work on the machine (other people's tests, say) shows up as noise in the figures.
    load_average: tuple[float, float, float] = field(default_factory=os.getloadavg)
    seconds: float = 0.0
    sync: dict[str, Any] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    cancel: dict[str, Any] = field(default_factory=dict)
    queries: dict[int, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    sync_profile: dict[str, Any] = field(default_factory=dict)


_T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[bench {time.perf_counter() - _T0:6.1f} s] {message}", flush=True)


class Run:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.sup = Supervisor(workdir)
        self.results = Results(options)
        self.sim: SimControl | None = None
        self.sim_child: Child | None = None
        self.web: Child | None = None
        self.web_url = ""
        self.env: dict[str, str] = {}
        self.created: list[str] = []
        self.completed_id = ""

    # --- the whole run ------------------------------------------------------------------------

    def execute(self) -> Results:
        started = time.perf_counter()
        try:
            self.prepare()
            self.bench_sync()
            self.start_web()
            viewers, latency_client, operator = self.sign_in()
            self.bench_viewers(viewers)
            self.bench_latency(latency_client)
            self.bench_payload(latency_client)
            self.bench_cancel(operator)
            self.profile_sync()
            self.stop_servers()
            self.bench_queries()
            self.profile_pages()
        finally:
            self.sup.stop_all()
        self.results.seconds = time.perf_counter() - started
        return self.results

    def stop_servers(self) -> None:
        # The in-process measurements that follow get both cores to themselves.
        for child in (self.web, self.sim_child):
            if child is not None:
                self.sup.stop(child)

    # --- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        (self.workdir / "static").mkdir(exist_ok=True)
        database_url = self.main_database()
        self.prepare_cache()
        sim_url = self.start_simulator(database_url)
        self.env = child_env(self.options, self.workdir, database_url, sim_url)
        say("migrating")
        self.sup.run("migrate", [*MANAGE, "migrate", "--noinput", "-v", "0"], self.env, timeout=300)
        if not self.options.database_url:
            # A migrated, empty copy for the query-count databases: cheaper than migrating each.
            _copy_sqlite(self.workdir / "db.sqlite3", self.workdir / "empty.sqlite3")
        self.inproc(
            "users", ["--viewer", ":".join(VIEWER), "--operator", ":".join(OPERATOR)], self.env, timeout=120
        )

    def main_database(self) -> str:
        if not self.options.database_url:
            return f"sqlite:///{self.workdir / 'db.sqlite3'}"
        self.results.database = f"PostgreSQL {_pg_version(self.options.database_url)}, database {PG_DATABASE}"
        return _recreate_pg_database(self.options.database_url, PG_DATABASE)

    def prepare_cache(self) -> None:
        if not self.options.cache_url:
            return
        import redis

        # A dedicated database: sessions and cached menus from an earlier run must not help this one.
        client = redis.Redis.from_url(self.options.cache_url)
        client.flushdb()
        self.results.cache = f"Redis {client.info().get('redis_version', '?')} ({self.options.cache_url})"

    def start_simulator(self, database_url: str) -> str:
        o = self.options
        say(f"starting the simulator with {o.batches} batches")
        # Port 0: the simulator binds a free port itself and prints it, so there is no race for one.
        args = [
            *MANAGE, "simulate_upstream", "--port", "0", "--batches", str(o.batches), "--seed", str(o.seed),
            "--cancel-delay", f"{o.cancel_delay:g}", "--api-key", SIM_KEY,
            # No spontaneous arrivals: the incremental sync sees exactly the batches this run creates.
            "--arrival-interval", "0",
        ]  # fmt: skip
        # It loads the settings, so it needs a well-formed database URL, but it never opens it.
        env = child_env(o, self.workdir, database_url, "http://127.0.0.1:9")
        self.sim_child = self.sup.start("simulator", args, env)
        found = wait_for_line(self.sim_child, r"at http://127\.0\.0\.1:(\d+)/v1", timeout=120)
        root = f"http://127.0.0.1:{found.group(1)}"
        self.sim = SimControl(root)
        return root

    def inproc(self, command: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
        out = self.workdir / f"inproc-{command}-{time.monotonic_ns()}.json"
        self.sup.run(
            f"inproc-{command}",
            [PYTHON, "-m", "bench.inproc", "--out", str(out), command, *args],
            env,
            timeout,
        )
        return dict(json.loads(out.read_text()))

    def state(self) -> dict[str, Any]:
        return self.inproc("state", [], self.env, timeout=120)

    # --- 4. sync cost -------------------------------------------------------------------------

    def sync_once(self, name: str) -> dict[str, Any]:
        assert self.sim is not None
        self.sim.reset_stats()
        finished = self.sup.run(name, [*MANAGE, "sync_batches", "--once"], self.env, timeout=900)
        stats = self.sim.stats()
        line = re.search(r"default: (\d+) requests, (\d+) new, (.+)", finished.output)
        return {
            "requests": sum(stats.values()),
            "by_route": stats,
            "wall_seconds": finished.seconds,
            "reported_requests": int(line.group(1)) if line else None,
            "new": int(line.group(2)) if line else None,
            "outcome": line.group(3).strip() if line else finished.output[-300:],
        }

    def bench_sync(self) -> None:
        assert self.sim is not None
        o = self.options
        say("4. sync: first import")
        first = self.sync_once("sync-first")
        after_first = self.state()
        first.update(
            mirrored=after_first["total"],
            upstream=o.batches,
            minimum=math.ceil(o.batches / PAGE_SIZE),
            cycle_seconds=after_first["sync"]["default"]["last_cycle_seconds"],
            active_mirrored=len(after_first["active"]),
        )
        say(f"   {first['requests']} requests, {first['mirrored']} batches, {first['wall_seconds']:.1f} s")

        say(f"4. sync: incremental, after creating {o.created} batches upstream")
        # In progress for two hours: they stay cancellable for the cancel benchmark, and viewers poll them.
        for _ in range(o.created):
            batch = self.sim.create_batch(status="in_progress", in_progress_seconds=7200, total=20000)
            self.created.append(batch["id"])
        # Nothing has synced since the first import: the mirror is as it was then.
        before = after_first
        listing = self.sim.batch_ids()
        elapsed = time.time() - self.results.started_at
        incremental = self.sync_once("sync-incremental")
        after = self.state()
        new = after["total"] - before["total"]
        # The cycle's bound: ceil(new/100) + 1 list pages, plus a retrieve for each mirrored active
        # batch those pages do not reach.
        pages = math.ceil(new / PAGE_SIZE) + 1
        reached = set(listing[: pages * PAGE_SIZE])
        not_reached = len(set(before["active"]) - reached)
        incremental.update(
            created=list(self.created),
            mirrored_new=new,
            active_before=len(before["active"]),
            active_not_reached=not_reached,
            minimum=math.ceil(new / PAGE_SIZE) + not_reached + 1,
            optimum=_optimum(set(before["active"]), listing, new),
            cycle_seconds=after["sync"]["default"]["last_cycle_seconds"],
            changes=_changes(before["active"], after["active"]),
            run_seconds_before=elapsed,
        )
        self.completed_id = after["completed_ids"][0]
        self.results.sync = {"first": first, "incremental": incremental, "by_status": after["by_status"]}
        say(f"   {incremental['requests']} requests (bound {incremental['minimum']})")

    # --- the web server -----------------------------------------------------------------------

    def start_web(self) -> None:
        o = self.options
        gunicorn = Path(PYTHON).with_name("gunicorn")
        command = [str(gunicorn)] if gunicorn.exists() else [PYTHON, "-m", "gunicorn"]
        for _attempt in range(3):
            port = free_port()
            args = [*command, "dashboard.wsgi", "--workers", str(o.workers), "--bind", f"127.0.0.1:{port}",
                    "--graceful-timeout", "5",
                    # Not gunicorn's default control socket in $HOME: nothing outside the run's directory.
                    "--no-control-socket"]  # fmt: skip
            say(f"starting gunicorn ({o.workers} workers) on port {port}")
            self.web = self.sup.start("gunicorn", args, self.env)
            try:
                wait_for_http(self.web, f"http://127.0.0.1:{port}/bench/ping", timeout=60)
            except RuntimeError:
                # Someone took the port between our check and gunicorn's bind: try another.
                self.sup.stop(self.web)
                continue
            self.web_url = f"http://127.0.0.1:{port}"
            return
        raise RuntimeError("gunicorn did not start; see gunicorn.log in the run's directory")

    def sign_in(self) -> tuple[list[Viewer], DashboardClient, DashboardClient]:
        """Every viewer signs in through the form, like a browser (a few at a time: PBKDF2 is slow)."""
        o = self.options
        say(f"signing in {o.viewers} viewers, a latency client and the operator")
        clients = [DashboardClient(self.web_url) for _ in range(o.viewers + 2)]
        credentials = [VIEWER] * (o.viewers + 1) + [OPERATOR]
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda pair: pair[0].login(*pair[1]), zip(clients, credentials, strict=True)))
        targets = self.viewer_targets()
        viewers = [Viewer(client, targets) for client in clients[: o.viewers]]
        return viewers, clients[-2], clients[-1]

    def batch_path(self, batch_id: str, suffix: str = "") -> str:
        return f"/batches/default/{batch_id}/{suffix}"

    def viewer_targets(self) -> list[Target]:
        # The newest created batch is active (and polled live); a completed one answers 286.
        active, row = self.created[-1], self.created[-2]
        return [
            Target("list", "/batches/"),
            Target("row fragment", self.batch_path(row, "row/"), htmx=True, poll=True),
            Target("detail", self.batch_path(active)),
            Target("live fragment", self.batch_path(active, "live/"), htmx=True, poll=True),
            Target("detail", self.batch_path(self.completed_id)),
            Target("live fragment", self.batch_path(self.completed_id, "live/"), htmx=True, poll=True),
        ]

    # --- 1. upstream requests vs viewers (and the load figures) -------------------------------

    def bench_viewers(self, viewers: list[Viewer]) -> None:
        for count in (1, len(viewers)):
            self.results.windows.append(self.window(viewers[:count]))

    def window(self, viewers: list[Viewer]) -> dict[str, Any]:
        assert self.sim is not None and self.web is not None
        o = self.options
        for viewer in viewers:
            viewer.samples = []
        # Both windows start with a mirror older than REFRESH_INTERVAL, so both pay for a refresh.
        time.sleep(o.settle)
        say(f"1. {len(viewers)} viewer(s) for {o.window:g} s")
        log_mark = len(self.web.output())
        upstream: dict[str, int] = {}

        def at_deadline() -> None:
            upstream.update(self.sim.stats())  # type: ignore[union-attr]

        self.sim.reset_stats()
        run_viewers(viewers, o.window, o.think, at_deadline)
        samples = [s for v in viewers for s in v.samples]
        cycles = refresh_cycles(self.web.output()[log_mark:])
        by_kind = {kind: LatencySummary.of(s for s in samples if s.kind == kind) for kind in _kinds(samples)}
        result = {
            "viewers": len(viewers),
            "seconds": o.window,
            "page_requests": len(samples),
            "errors": sum(1 for s in samples if not s.ok),
            "error_kinds": _error_kinds(samples),
            "all": LatencySummary.of(samples),
            "by_kind": by_kind,
            "upstream": sum(upstream.values()),
            "upstream_by_route": upstream,
            "sync_cycles": len(cycles),
            "sync_cycle_requests": [c.requests for c in cycles],
            "sync_cycle_seconds": [c.seconds for c in cycles],
        }
        say(
            f"   {result['page_requests']} page requests, {result['errors']} errors, "
            f"{result['upstream']} upstream requests, {len(cycles)} refresh cycles"
        )
        return result

    # --- 2. latency against the floor -----------------------------------------------------------

    def bench_latency(self, client: DashboardClient) -> None:
        o = self.options
        say(f"2. latency: {o.samples} sequential requests per page, after {o.warmup} to warm up")
        targets = [
            Target("ping", "/bench/ping"),
            Target("signed-in ping", "/bench/ping-signed-in"),
            Target("list", LIST_FILTERED),
            # As htmx polls it: with the version of the fragment shown, so 204 while nothing changed.
            Target("fragment", self.batch_path(self.created[-1], "live/"), htmx=True, poll=True),
        ]
        for _ in range(o.warmup):
            for target in targets:
                client.get(target)
        assert self.web is not None
        log_mark = len(self.web.output())
        samples: list[Sample] = []
        # Interleaved, so that whatever else the machine does touches the pages alike.
        for _ in range(o.samples):
            for target in targets:
                samples.append(client.get(target))
        summaries = {t.kind: LatencySummary.of(s for s in samples if s.kind == t.kind) for t in targets}
        _, html = client.fetch(targets[2])
        cycles = refresh_cycles(self.web.output()[log_mark:])
        # The same requests, split by whether a background refresh ran while they were served.
        split = {
            t.kind: {
                during: LatencySummary.of(
                    s for s in samples if s.kind == t.kind and during_refresh(s, cycles) == during
                )
                for during in (True, False)
            }
            for t in targets
        }
        self.results.latency = {
            "paths": {t.kind: t.path for t in targets},
            "summaries": summaries,
            "by_refresh": split,
            "cycles": len(cycles),
            "cycle_seconds": [c.seconds for c in cycles],
            "list_rows_shown": html.count('id="batch-row-'),
        }

    # --- 5. payload -----------------------------------------------------------------------------

    def bench_payload(self, client: DashboardClient) -> None:
        say("5. payload")
        active = self.created[-1]
        targets = [
            Target("live fragment (poll)", self.batch_path(active, "live/"), htmx=True, poll=True),
            Target("live fragment (poll, unchanged)", self.batch_path(active, "live/"), htmx=True, poll=True),
            Target("row fragment (poll)", self.batch_path(self.created[-2], "row/"), htmx=True, poll=True),
            Target(
                "row fragment (poll, unchanged)",
                self.batch_path(self.created[-2], "row/"),
                htmx=True,
                poll=True,
            ),
            Target("list page", "/batches/"),
            Target("list page (status + search)", LIST_FILTERED),
            Target("list results (htmx swap)", "/batches/", htmx=True),
            Target("detail page", self.batch_path(active)),
        ]
        rows = {}
        # The first poll of each fragment without a version: it is rendered in full, as after a change.
        client.versions.clear()
        for target in targets:
            sample, body = client.fetch(target)
            rows[target.kind] = {
                "path": target.path,
                "status": sample.status,
                "bytes": len(body.encode()),
                "gzip_bytes": len(gzip.compress(body.encode())),
                "parts": _html_parts(body),
            }
        self.results.payload = rows

    # --- 6. cancel to confirmation ----------------------------------------------------------------

    def bench_cancel(self, operator: DashboardClient) -> None:
        o = self.options
        view = REPO / "batches" / "views" / "cancel.py"
        if not view.exists() or "def cancel_batch" not in view.read_text():
            self.results.cancel = {
                "available": False,
                "why": "batches/views/cancel.py has no cancel_batch view",
            }
            say("6. cancel: not available")
            return
        say(f"6. cancel to confirmation: {o.cancel_trials} trial(s), cancel delay {o.cancel_delay:g} s")
        trials = []
        assert self.web is not None
        log_mark = len(self.web.output())
        for batch_id in self.created[: o.cancel_trials]:
            trials.append(self.cancel_trial(operator, batch_id))
            if trials[-1].get("unavailable"):
                self.results.cancel = {"available": False, "why": trials[-1]["unavailable"]}
                return
            time.sleep(1.3)  # a different phase against the refresh cycle for the next trial
        cycles = refresh_cycles(self.web.output()[log_mark:])
        for trial in trials:
            trial.update(_confirmation_path(trial, cycles, o.cancel_delay))
        self.results.cancel = {"available": True, "trials": trials}

    def cancel_trial(self, operator: DashboardClient, batch_id: str) -> dict[str, Any]:
        o = self.options
        row = Target("row", self.batch_path(batch_id, "row/"), htmx=True)
        started = time.perf_counter()
        sample, html = operator.post_htmx(
            "cancel",
            self.batch_path(batch_id, "cancel/"),
            {"reason": "bench: cancel to confirmation", "where": "row"},
        )
        if sample.status in (404, 405):
            return {
                "unavailable": f"POST {self.batch_path(batch_id, 'cancel/')} answered HTTP {sample.status}"
            }
        trial: dict[str, Any] = {
            "batch_id": batch_id,
            "posted_at": sample.started,
            "post_status": sample.status,
            "post_seconds": sample.seconds,
            "status_after_post": badge_status(html),
            "polls": 0,
        }
        deadline = started + o.cancel_delay + 60
        # Like htmx: one poll every POLL_INTERVAL seconds after the swap, until a terminal status.
        while time.perf_counter() < deadline:
            next_poll = started + sample.seconds + (trial["polls"] + 1) * o.poll_interval
            time.sleep(max(0.0, next_poll - time.perf_counter()))
            _, html = operator.fetch(row)
            trial["polls"] += 1
            status = badge_status(html)
            if status in TERMINAL:
                elapsed = time.perf_counter() - started
                trial.update(
                    final_status=status,
                    elapsed=elapsed,
                    overhead=elapsed - o.cancel_delay,
                    shown_at=time.time(),
                )
                say(f"   {batch_id[:16]}… {status} after {elapsed:.2f} s ({trial['polls']} polls)")
                return trial
        trial.update(final_status="(none: gave up)", elapsed=math.nan, overhead=math.nan)
        return trial

    # --- 3. queries per page ---------------------------------------------------------------------

    def bench_queries(self) -> None:
        for rows in self.options.query_rows:
            say(f"3. queries per page with {rows} batches and {rows} audit entries")
            if self.options.database_url:
                url = _recreate_pg_database(self.options.database_url, f"{PG_DATABASE}_q{rows}")
            else:
                path = self.workdir / f"queries-{rows}.sqlite3"
                _copy_sqlite(self.workdir / "empty.sqlite3", path)
                url = f"sqlite:///{path}"
            env = self.quiet_env(url)
            try:
                self.results.queries[rows] = self.inproc(
                    "queries", ["--rows", str(rows), "--seed", str(self.options.seed)], env, timeout=600
                )
            finally:
                if self.options.database_url:
                    _drop_pg_database(self.options.database_url, f"{PG_DATABASE}_q{rows}")

    def quiet_env(self, database_url: str) -> dict[str, str]:
        """For in-process measurements: the test client's host allowed, and no background refresh."""
        env = dict(self.env)
        env.update(
            DATABASE_URL=database_url,
            ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
            REFRESH_INTERVAL="86400",
            OPENAI_BASE_URL="http://127.0.0.1:9",  # the simulator is gone; nothing may call it
        )
        return env

    def profile_sync(self) -> None:
        say("profiling one refresh cycle in-process (cProfile)")
        self.results.sync_profile = self.inproc("sync-profile", [], self.env, timeout=300)

    def profile_pages(self) -> None:
        say("profiling the list page and the poll fragment in-process (cProfile, Django's test client)")
        env = self.quiet_env(self.env["DATABASE_URL"])
        repeat = "10" if self.options.mode == "smoke" else "40"
        pages = {
            "list": [LIST_FILTERED],
            # As the latency benchmark asks for it: a poll of an unchanged batch.
            "fragment": [self.batch_path(self.created[-1], "live/"), "--htmx", "--poll"],
        }
        for name, (path, *flags) in pages.items():
            args = ["--path", path, *flags, "--user", VIEWER[0], "--repeat", repeat]
            self.results.profiles[name] = self.inproc("profile", args, env, timeout=300)


# --- helpers ------------------------------------------------------------------------------------


def _kinds(samples: list[Sample]) -> list[str]:
    return list(dict.fromkeys(s.kind for s in samples))


def _error_kinds(samples: list[Sample]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            key = f"{s.kind}: {s.error or f'HTTP {s.status}'}"
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def _changes(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, Any]:
    """What moved among the mirrored active batches between two snapshots (by real-time progress)."""
    finished = [bid for bid in before if bid not in after]
    moved = [bid for bid in before if bid in after and after[bid][0] != before[bid][0]]
    progressed = [
        bid
        for bid in before
        if bid in after and after[bid][0] == before[bid][0] and after[bid] != before[bid]
    ]
    return {"became_terminal": len(finished), "changed_status": len(moved), "progressed": len(progressed)}


def _html_parts(body: str) -> dict[str, int]:
    """Bytes of inline SVG (charts, progress bars) and of tables, to see what a response is made of."""
    svg = re.compile(r"<svg\b.*?</svg>", re.S)
    svg_bytes = sum(len(m.group(0).encode()) for m in svg.finditer(body))
    rest = svg.sub("", body)
    # Tables do not nest in these templates; the SVG inside them is already counted.
    tables = sum(len(m.group(0).encode()) for m in re.finditer(r"<table\b.*?</table>", rest, re.S))
    return {"svg": svg_bytes, "tables": tables, "rest": len(rest.encode()) - tables}


def _confirmation_path(trial: dict[str, Any], cycles: list[Cycle], delay: float) -> dict[str, Any]:
    """Where the wait went: until a refresh cycle started after the upstream turned `cancelled` (its
    first list page holds the batch, one of the newest), then until a poll showed what it stored."""
    if "shown_at" not in trial:
        return {}
    cancelled_at = trial["posted_at"] + trial["post_seconds"] + delay
    cycle = next((c for c in cycles if cancelled_at <= c.start <= trial["shown_at"]), None)
    if cycle is None:
        return {}
    return {"until_refresh": cycle.start - cancelled_at, "then_shown": trial["shown_at"] - cycle.start}


def _optimum(active: set[str], listing: list[str], new: int) -> int:
    """The fewest requests that see every new batch and refresh every mirrored active one:
    k list pages (at least enough to reach a known batch) plus a retrieve per active batch beyond."""
    fewest = math.ceil((new + 1) / PAGE_SIZE)
    best = math.inf
    for pages in range(fewest, math.ceil(len(listing) / PAGE_SIZE) + 1):
        best = min(best, pages + len(active - set(listing[: pages * PAGE_SIZE])))
    return int(best) if best != math.inf else fewest


def _copy_sqlite(source: Path, target: Path) -> None:
    # The backup API copies a consistent database, whatever is still in its write-ahead log.
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def _pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _pg_version(url: str) -> str:
    with _pg_connect(url) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


def _drop_pg_database(url: str, name: str) -> None:
    from psycopg import sql

    with _pg_connect(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _recreate_pg_database(url: str, name: str) -> str:
    from psycopg import sql

    with _pg_connect(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(url, name)


def cleanup(workdir: Path, keep: bool, failed: bool) -> None:
    if keep or failed:
        print(f"[bench] the run's directory (logs, databases) is kept: {workdir}", file=sys.stderr)
        return
    shutil.rmtree(workdir, ignore_errors=True)
