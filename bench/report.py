"""docs/PERFORMANCE.md from a run's results: the machine, the figures, each target PASS or MISS."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.suite import Results
from bench.web import LatencySummary

KB = 1024


@dataclass(frozen=True)
class Check:
    """One target: where it is measured, what it asks, what was found, and whether it holds."""

    key: str  # what bench/diagnose.py explains a miss by
    benchmark: str
    target: str
    figure: str
    ok: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else "PASS" if self.ok else "MISS"


# --- formatting -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def ratio(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def growth(one: int, many: int) -> float:
    if one == 0:
        return 1.0 if many == 0 else math.inf
    return many / one


def generic(path: str) -> str:
    return "/".join("<id>" if part.startswith("batch_") else part for part in path.split("/"))


def routes(by_route: dict[str, int]) -> str:
    return ", ".join(f"{route}: {n}" for route, n in sorted(by_route.items())) or "—"


# --- the machine ------------------------------------------------------------------------------------


def machine(results: Results) -> list[list[str]]:
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    memory = _proc_field("/proc/meminfo", "MemTotal")
    memory_text = f"{int(memory.split()[0]) / 1024 / 1024:.1f} GiB" if memory else "unknown"
    return [
        ["CPU", f"{cpu}, {os.cpu_count()} cores (nproc)"],
        ["Memory", memory_text],
        ["OS", f"{platform.system()} {platform.release()}"],
        ["Python", platform.python_version()],
        ["Django", version("django")],
        ["gunicorn", f"{version('gunicorn')}, {results.options.workers} sync workers"],
        ["Database", results.database],
        ["Cache", results.cache],
        ["Load average at start", " / ".join(f"{x:.2f}" for x in results.load_average) + " (1, 5, 15 min)"],
    ]


def _proc_field(path: str, name: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return ""


# --- targets ------------------------------------------------------------------------------------------


def checks(results: Results) -> list[Check]:
    found: list[Check] = []
    for part in (
        _viewer_checks,
        _latency_checks,
        _query_checks,
        _sync_checks,
        _payload_checks,
        _cancel_checks,
    ):
        found += part(results)
    return found


def _viewer_checks(results: Results) -> list[Check]:
    if len(results.windows) < 2:
        return []
    one, many = results.windows[0], results.windows[-1]
    grew = growth(one["upstream"], many["upstream"])
    return [
        Check(
            "upstream",
            "1. Upstream vs viewers",
            f"{many['viewers']} viewers ≤ 1.1x the upstream requests of 1 viewer",
            f"{one['upstream']} → {many['upstream']} requests ({ratio(grew)})",
            grew <= 1.1,
        ),
        Check(
            "errors",
            "Load",
            f"{many['viewers']} viewers for {many['seconds']:g} s: zero errors",
            f"{many['errors']} errors in {many['page_requests']:,} requests; "
            f"p50 {ms(many['all'].median)}, p99 {ms(many['all'].p99)}",
            many["errors"] == 0,
        ),
    ]


def _latency_checks(results: Results) -> list[Check]:
    if not results.latency:
        return []
    s: dict[str, LatencySummary] = results.latency["summaries"]
    floor = s["ping"].median
    list_ratio, fragment_ratio = s["list"].median / floor, s["fragment"].median / floor
    return [
        Check(
            "list_ratio",
            "2. Latency",
            "list median ≤ 2.0x the trivial view's",
            f"{ms(s['list'].median)} / {ms(floor)} = {ratio(list_ratio)}",
            list_ratio <= 2.0,
        ),
        Check(
            "fragment_ratio",
            "2. Latency",
            "poll fragment median ≤ 1.3x the trivial view's",
            f"{ms(s['fragment'].median)} / {ms(floor)} = {ratio(fragment_ratio)}",
            fragment_ratio <= 1.3,
        ),
        Check("list_p99", "2. Latency", "list p99 < 100 ms", ms(s["list"].p99), s["list"].p99 < 0.1),
    ]


def query_sizes(results: Results) -> tuple[int, int]:
    small, large = sorted(results.queries)
    return small, large


def _query_checks(results: Results) -> list[Check]:
    if len(results.queries) < 2:
        return []
    n_small, n_large = query_sizes(results)
    small, large = results.queries[n_small]["pages"], results.queries[n_large]["pages"]
    unequal = [name for name in small if small[name]["queries"] != large[name]["queries"]]
    lists = [name for name in small if name.startswith("list")]
    most = max(max(small[n]["queries"], large[n]["queries"]) for n in lists)
    return [
        Check(
            "queries_equal",
            "3. Queries",
            f"same count at {n_small:,} and {n_large:,} rows, every page",
            "all equal" if not unequal else "differ: " + ", ".join(unequal),
            not unequal,
        ),
        Check("queries_list", "3. Queries", "list ≤ 6 queries", f"{most} queries", most <= 6),
    ]


def _sync_checks(results: Results) -> list[Check]:
    if not results.sync:
        return []
    first, inc = results.sync["first"], results.sync["incremental"]
    return [
        Check(
            "sync_first",
            "4. Sync",
            f"first import of {first['upstream']:,} ≤ ceil(N/100) = {first['minimum']} requests",
            f"{first['requests']} requests, {first['wall_seconds']:.1f} s",
            first["requests"] <= first["minimum"],
        ),
        Check(
            "sync_incremental",
            "4. Sync",
            f"incremental ≤ ceil(new/100) + active not reached + 1 = {inc['minimum']}",
            f"{inc['requests']} requests (fewest possible {inc['optimum']}), {inc['wall_seconds']:.1f} s",
            inc["requests"] <= inc["minimum"],
        ),
    ]


def _payload_checks(results: Results) -> list[Check]:
    if not results.payload:
        return []
    found = []
    for key, kind, label in (
        ("payload_live", "live fragment (poll)", "live (detail) poll fragment ≤ 2 KB as sent"),
        ("payload_row", "row fragment (poll)", "row (list) poll fragment ≤ 2 KB as sent"),
    ):
        # The fragment views gzip what they send; a poll of an unchanged batch gets 204 and no body.
        p = results.payload[kind]
        unchanged = results.payload.get(kind.replace("(poll)", "(poll, unchanged)"), {})
        size = p["gzip_bytes"]
        measured = f"{size:,} B gzipped ({p['bytes']:,} B rendered) when it changed"
        if unchanged:
            measured += f"; {unchanged['bytes']:,} B (HTTP {unchanged['status']}) when not"
        found.append(Check(key, "5. Payload", label, measured, size <= 2 * KB))
    return found


def _cancel_checks(results: Results) -> list[Check]:
    cancel, o = results.cancel, results.options
    target = f"cancel to `cancelled`, minus the {o.cancel_delay:g} s delay, ≤ {o.poll_interval} s poll + 1 s"
    if not cancel.get("available"):
        return [Check("cancel", "6. Cancel", target, "not available: " + cancel.get("why", "not run"), None)]
    overheads = [t["overhead"] for t in cancel["trials"]]
    worst = max(overheads)
    cancels = f"{len(overheads)} cancel" + ("" if len(overheads) == 1 else "s")
    figure = f"worst {worst:.2f} s, median {median_or_nan(overheads):.2f} s ({cancels})"
    return [Check("cancel", "6. Cancel", target, figure, worst <= o.poll_interval + 1)]


# --- the document -------------------------------------------------------------------------------------


def render(results: Results) -> str:
    from bench.diagnose import causes

    o = results.options
    found = checks(results)
    when = dt.datetime.fromtimestamp(results.started_at, tz=dt.UTC)
    misses = [c for c in found if c.ok is False]
    parts = [
        "# Performance",
        f"Measured on {when:%Y-%m-%d %H:%M} UTC with `{o.command}` ({o.mode} run, {results.seconds:.0f} s). "
        "This file is written by the benchmark; run the command again to refresh it. "
        "[How the benchmark works](#running-the-benchmark).",
        "## Summary",
        table(
            ["Benchmark", "Target", "Measured", "Result"],
            [[c.benchmark, c.target, c.figure, f"**{c.verdict}**"] for c in found],
        ),
        "## Machine",
        table(["", ""], machine(results)),
        _setup_section(results),
        _viewers_section(results),
        _latency_section(results),
        _queries_section(results),
        _sync_section(results),
        _payload_section(results),
        _cancel_section(results),
        "## Misses and causes",
        "\n\n".join(causes(results, misses)) if misses else "None: every target was met.",
        _profile_section(results),
        _how_section(),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _setup_section(results: Results) -> str:
    o = results.options
    return "\n".join(
        [
            "## Set-up",
            "- Upstream: the built-in simulator as its own process (`manage.py simulate_upstream "
            f"--batches {o.batches} --seed {o.seed} --cancel-delay {o.cancel_delay:g} "
            "--arrival-interval 0`), over real HTTP on 127.0.0.1; its `/_sim/stats` counts every API "
            "request it serves. Its clock follows real time, so active batches progress during the run.",
            f"- Dashboard: `gunicorn dashboard.wsgi --workers {o.workers}` with `DEBUG=false`, "
            f"`SYNC_ON_DEMAND=true`, `REFRESH_INTERVAL={o.refresh_interval}`, "
            f"`POLL_INTERVAL={o.poll_interval}`, settings `bench.settings_bench` (the project's settings "
            "plus the trivial view `/bench/ping`). No sync worker runs during the web benchmarks: page "
            "views refresh the mirror on demand, in a background thread of the worker that served them.",
            "- Viewers: threads in the benchmark's process, each its own `requests.Session` signed in "
            "through the login form, asking in turn for the list page, a row fragment, two detail pages "
            "(an in-progress and a completed batch) and their live fragments (`HX-Request: true` for "
            f"fragments), then pausing {o.think:g} s (one poll interval). The load generator shares the "
            "machine's cores with gunicorn.",
        ]
    )


def _viewers_section(results: Results) -> str:
    if not results.windows:
        return ""
    rows = []
    for w in results.windows:
        a: LatencySummary = w["all"]
        cycles = ", ".join(
            f"{n} in {sec:.1f} s"
            for n, sec in zip(w["sync_cycle_requests"], w["sync_cycle_seconds"], strict=True)
        )
        rows.append(
            [
                w["viewers"],
                f"{w['seconds']:g} s",
                f"{w['page_requests']:,} ({w['page_requests'] / w['seconds']:.1f}/s)",
                w["errors"],
                ms(a.median),
                ms(a.p99),
                f"**{w['upstream']}**",
                routes(w["upstream_by_route"]),
                f"{w['sync_cycles']}: {cycles or '—'}",
            ]
        )
    one, many = results.windows[0], results.windows[-1]
    kinds = [
        [kind, f"{s.count:,}", s.errors, ms(s.median), ms(s.p90), ms(s.p99)]
        for kind, s in many["by_kind"].items()
    ]
    errors = many["error_kinds"]
    header = ["Viewers", "Window", "Page requests", "Errors", "p50", "p99", "Upstream requests", "By route"]
    return "\n\n".join(
        [
            "## 1. Upstream requests vs viewers, and the load figures",
            "Simulator stats are reset at the start of each window and read the moment it ends. Before each "
            "window the mirror is left to go stale, so both windows start by paying for a refresh.",
            table([*header, "Refresh cycles (requests, duration)"], rows),
            f"Upstream requests grow {ratio(growth(one['upstream'], many['upstream']))} from 1 to "
            f"{many['viewers']} viewers (target ≤ 1.1x; a proxy that asked the upstream on every page view "
            f"would grow about {many['viewers']}x).",
            f"Load figures, {many['viewers']} concurrent viewers for {many['seconds']:g} s with "
            f"{results.options.workers} gunicorn workers: **{many['errors']} errors**"
            + (f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else "")
            + f", p50 {ms(many['all'].median)}, p99 {ms(many['all'].p99)}."
            + _saturation(one, many, results.options.workers)
            + " By page:",
            table(["Page", "Requests", "Errors", "p50", "p90", "p99"], kinds),
        ]
    )


def _saturation(one: dict[str, Any], many: dict[str, Any], workers: int) -> str:
    if not many["all"].median > 5 * one["all"].median:
        return ""
    rate_one, rate_many = one["page_requests"] / one["seconds"], many["page_requests"] / many["seconds"]
    return (
        f" The {workers} sync workers are busy all the time ({rate_many:.0f} requests/s, against "
        f"{rate_one:.0f}/s for one viewer), so these latencies are mostly waiting for a free worker: "
        f"the median request took {many['all'].median / one['all'].median:.0f}x as long as with one viewer."
    )


def _latency_section(results: Results) -> str:
    if not results.latency:
        return ""
    lat = results.latency
    s: dict[str, LatencySummary] = lat["summaries"]
    floor = s["ping"].median
    kinds = list(lat["paths"])  # older runs have no signed-in ping
    rows = [
        [f"{kind} `{generic(lat['paths'][kind])}`", s[kind].count, s[kind].errors, ms(s[kind].median),
         ms(s[kind].p90), ms(s[kind].p99), ratio(s[kind].median / floor)]
        for kind in kinds
    ]  # fmt: skip
    split_rows = []
    for kind in kinds:
        for during, label in ((True, "while a refresh ran"), (False, "otherwise")):
            part: LatencySummary = lat["by_refresh"][kind][during]
            split_rows.append([kind, label, part.count, ms(part.median), ms(part.p99)])
    o = results.options
    mirrored = results.sync.get("first", {}).get("mirrored", 0)
    signed_in = (
        " The signed-in ping is the same trivial view behind the check every page of the dashboard makes "
        "first (signed in, and a viewer): what loading the session, the user and the permissions costs, "
        "for comparison; the targets are against the bare ping."
        if "signed-in ping" in s
        else ""
    )
    return "\n\n".join(
        [
            "## 2. Page latency against the floor",
            "One signed-in client, sequential requests, the pages interleaved "
            f"({o.warmup} rounds to warm up, then {o.samples}), timed at the client over HTTP. The list "
            f"shows {lat['list_rows_shown']} rows of {mirrored:,} mirrored (`status=completed`, metadata "
            "search `q=owner`); the fragment is the live part of an in-progress batch's detail page, polled "
            "as htmx polls it (with the version it shows, so an unchanged batch answers 204, before the "
            "request is signed in); the floor is "
            f"the median of `/bench/ping`.{signed_in}",
            table(["Page", "Requests", "Errors", "Median", "p90", "p99", "Median / floor"], rows),
            *(
                [
                    f"The same requests, split by whether one of the {lat['cycles']} on-demand refresh "
                    f"cycles of the window (median {median_or_nan(lat['cycle_seconds']):.1f} s each) was "
                    "running in a worker while they were served:",
                    table(["Page", "Served", "Requests", "Median", "p99"], split_rows),
                ]
                if lat["cycles"]
                else ["No on-demand refresh cycle ran in a worker while these requests were served."]
            ),
        ]
    )


def _queries_section(results: Results) -> str:
    if not results.queries:
        return ""
    sizes = sorted(results.queries)
    pages = results.queries[sizes[0]]["pages"]
    rows = []
    for name, page in pages.items():
        counts = [results.queries[n]["pages"][name]["queries"] for n in sizes]
        rows.append(
            [name, f"`{generic(page['path'])}`", *counts, "yes" if len(set(counts)) == 1 else "**no**"]
        )
    database = "PostgreSQL" if results.options.database_url else "SQLite"
    return "\n\n".join(
        [
            "## 3. Queries per page",
            "In-process, Django's test client and `CaptureQueriesContext`, as a signed-in viewer, after one "
            "warm-up view of each page (the filter menus and the list page around its results come from "
            "the cache after that). "
            "Each database holds N mirrored batches (stored by `batches.sync.store_batches` from a simulator "
            f"of N) and N audit entries; the detail page's batch has audit entries. Database: {database}.",
            table(["Page", "URL", *[f"{n:,} rows" for n in sizes], "Equal"], rows),
        ]
    )


def _sync_section(results: Results) -> str:
    if not results.sync:
        return ""
    first, inc = results.sync["first"], results.sync["incremental"]
    changes = inc["changes"]
    rows = [
        [f"first import of {first['upstream']:,}", f"**{first['requests']}**", routes(first["by_route"]),
         first["minimum"], f"{first['wall_seconds']:.1f} s", f"{first['cycle_seconds']:.1f} s"],
        [f"incremental ({inc['mirrored_new']} new)", f"**{inc['requests']}**", routes(inc["by_route"]),
         f"{inc['minimum']} (fewest possible: {inc['optimum']})", f"{inc['wall_seconds']:.1f} s",
         f"{inc['cycle_seconds']:.2f} s"],
    ]  # fmt: skip
    parts = [
        "## 4. Sync cost",
        "`manage.py sync_batches --once` in a subprocess against the simulator; requests as counted by "
        "the simulator. Wall time includes starting Python and Django; cycle time is what the sync "
        "recorded.",
        table(["Cycle", "Requests", "By route", "Bound", "Wall", "Cycle"], rows),
        f"What changed before the incremental cycle: {len(inc['created'])} batches created through "
        "`POST /_sim/batches` (in progress, 20,000 requests, two hours to run). The simulated clock "
        f"follows real time, so in the {inc['run_seconds_before']:.0f} s since the simulator started, "
        f"the {inc['active_before']} mirrored active batches moved on their own too: "
        f"{changes['became_terminal']} ended, {changes['changed_status']} changed status, "
        f"{changes['progressed']} progressed. The bound is ceil({inc['mirrored_new']}/100) + "
        f"{inc['active_not_reached']} mirrored active batches beyond the first ceil(new/100) + 1 pages "
        "+ 1; the fewest possible is the best choice of k list pages plus one retrieve per active batch "
        "beyond them.",
    ]
    sp = results.sync_profile
    if sp:
        parts.append(
            "One more refresh cycle, profiled in-process at the end of the web benchmarks (what a stale "
            f"page view runs in a worker's background thread): {sp['requests']} requests "
            f"({sp['list_pages']} list pages, {sp['retrieved']} retrieves) in {sp['seconds']:.2f} s under "
            f"cProfile, of which {sp['store_seconds']:.2f} s storing the pages (`store_batches`); "
            f"{sp['active_mirrored']} active batches were mirrored."
        )
    return "\n\n".join(parts)


def _payload_section(results: Results) -> str:
    if not results.payload:
        return ""
    rows = []
    for kind, p in results.payload.items():
        made_of = ", ".join(f"{name} {size:,}" for name, size in p["parts"].items() if size)
        rows.append(
            [kind, f"`{generic(p['path'])}`", p["status"], f"{p['bytes']:,}", f"{p['gzip_bytes']:,}", made_of]
        )
    return "\n\n".join(
        [
            "## 5. Payload",
            "Body bytes as rendered, and gzipped: the poll fragments are sent gzipped by the app "
            "(pages are left to a compressing proxy); a poll carrying the version of an unchanged "
            "batch gets 204 with no body. And what they are made of.",
            table(["Response", "URL", "Status", "Bytes", "Gzipped", "Of which (bytes)"], rows),
        ]
    )


CANCEL_HEADER = ["Batch", "POST", "Shown after POST", "Polls", "Final", "Elapsed", "Overhead",
                 "Until a refresh started", "Then until shown"]  # fmt: skip


def _cancel_section(results: Results) -> str:
    cancel, o = results.cancel, results.options
    if not cancel:
        return ""
    head = "## 6. Cancel to confirmation"
    if not cancel.get("available"):
        why = cancel.get("why")
        return f"{head}\n\nNot available: {why}. The benchmark skips it until the cancel view exists."

    def seconds(trial: dict[str, Any], key: str) -> str:
        return f"{trial[key]:.2f} s" if key in trial else "—"

    rows = [
        [f"`{t['batch_id'][:20]}…`", f"{t['post_status']}, {ms(t['post_seconds'])}",
         t["status_after_post"] or "—", t["polls"], t["final_status"], f"{t['elapsed']:.2f} s",
         f"**{t['overhead']:.2f} s**",
         seconds(t, "until_refresh"), seconds(t, "then_shown")]
        for t in cancel["trials"]
    ]  # fmt: skip
    return "\n\n".join(
        [
            head,
            "As the operator: the Cancel POST (`HX-Request`, CSRF token, `where=row`) on an in-progress "
            f"batch, then the row fragment every POLL_INTERVAL = {o.poll_interval} s, as htmx would, until "
            "it shows a terminal status. The simulator turns a cancel `cancelled` "
            f"{o.cancel_delay:g} s after it is accepted; the overhead is the elapsed time minus that delay. "
            "The last two columns split the overhead, from gunicorn's log: until a refresh cycle started "
            "after the upstream turned `cancelled`, then until a poll showed what that cycle stored (it "
            "reads the batch on its first list page).",
            table(CANCEL_HEADER, rows),
        ]
    )


def _profile_section(results: Results) -> str:
    parts = []
    for name, p in results.profiles.items():
        queries = p["queries"]
        sql_total = sum(q["seconds"] for q in queries)
        per_view, render_s = p["per_view_seconds"], p["render_seconds"]
        parts += [
            f"### {name.capitalize()}: `{generic(p['path'])}`",
            f"Median {ms(p['median_seconds'])} per view over {p['repeat']} views without the profiler; "
            f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'} taking {sql_total * 1000:.1f} ms "
            "together (each re-run with its rows "
            f"fetched). Under cProfile (which slows Python code down) a view took {ms(per_view)}, "
            f"{render_s / per_view:.0%} of it in template rendering (`render_to_string`).",
            table(
                ["Time", "SQL (truncated)"],
                [[f"{q['seconds'] * 1000:.2f} ms", f"`{q['sql'][:140]}`"] for q in queries],
            ),
        ]
        parts += [
            "Busiest functions by their own time, per view:",
            _functions(p["by_self"]),
            "The app's own functions by cumulative time, per view:",
            _functions(p["app_cumulative"]),
        ]
    if not parts:
        return ""
    head = (
        "## Profiles\n\nIn-process against the run's database after the web benchmarks (Django's test "
        "client: no HTTP, no background refresh), as the viewer."
    )
    return head + "\n\n" + "\n\n".join(parts)


def _functions(rows: list[dict[str, Any]]) -> str:
    return table(
        ["Function", "Calls", "Self", "Cumulative"],
        [[f"`{r['function']}`", f"{r['calls']:g}", ms(r["self"]), ms(r["cumulative"])] for r in rows],
    )


def _how_section() -> str:
    return "\n".join(
        [
            "## Running the benchmark",
            "```sh",
            ".venv/bin/python bench/run.py            # the full run (a few minutes); rewrites this file",
            ".venv/bin/python bench/run.py --quick    # 10 viewers, 10 s windows; writes bench/results/",
            ".venv/bin/python bench/run.py --smoke    # tiny; what tests/test_bench_smoke.py runs",
            ".venv/bin/python bench/run.py --database-url postgres://postgres@127.0.0.1:5432/postgres \\",
            "    --cache-url redis://127.0.0.1:6379/2   # PostgreSQL (database bench_dashboard) and Redis",
            "```",
            "Each run works in a new temporary directory (its own SQLite database, logs), picks free "
            "ports, starts the simulator and gunicorn as subprocesses and stops them at the end, also on "
            "Ctrl-C or an error. `--keep` keeps the directory; `--report PATH` writes the report "
            "elsewhere; `--help` lists the rest. Only 127.0.0.1 is contacted. The code: `bench/run.py` "
            "(entry), `bench/suite.py` (the benchmarks), `bench/inproc.py` (query counts and profiles, "
            "inside Django), `bench/web.py` (HTTP clients and viewers), `bench/serverlog.py` (refresh "
            "cycles from gunicorn's log), `bench/report.py` and `bench/diagnose.py` (this file).",
        ]
    )
