"""The likely cause of each missed target, from what the run measured, and the suggested fix.

Each explanation quotes the run's own figures (profiles, SQL timings, the refresh cycles in
gunicorn's log), so that it stays true when the numbers move; the fixes are suggestions for the
app, which the benchmark never changes.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.web import LatencySummary

if TYPE_CHECKING:
    from bench.report import Check
    from bench.suite import Results


def causes(results: Results, misses: list[Check]) -> list[str]:
    texts = []
    for miss in misses:
        explain = EXPLAIN.get(miss.key)
        body = explain(results) if explain else "No automatic diagnosis for this target."
        texts.append(f"### {miss.benchmark}: {miss.target} — {miss.figure}\n\n{body}")
    return texts


def _ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _plural(n: int | None, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _slowest(profile: dict[str, Any]) -> dict[str, Any]:
    return max(profile["queries"], key=lambda q: q["seconds"], default={"seconds": 0.0, "sql": ""})


def _cycle_seconds(results: Results) -> float:
    seconds = [s for w in results.windows for s in w["sync_cycle_seconds"]]
    return _median(seconds + list(results.latency.get("cycle_seconds", [])))


def _refresh_cost(results: Results) -> str:
    """The shared cause of several misses: what one on-demand refresh cycle costs the web worker."""
    sp = results.sync_profile
    seconds = _cycle_seconds(results)
    text = (
        "On-demand refresh cycles run in a background thread of the gunicorn worker that served a stale page"
    )
    text += (
        f", and in this run one took {seconds:.1f} s (median, from gunicorn's log) for a handful of upstream "
        "requests."
        if not math.isnan(seconds)
        else "."
    )
    if sp:
        text += (
            f" Profiled, a cycle of {_plural(sp['requests'], 'request')} took {sp['seconds']:.2f} s, "
            f"{sp['store_seconds']:.2f} s of it in `store_batches`, which writes one narrow `UPDATE` per "
            f"changed row: of the {sp['active_mirrored']} mirrored active batches, most move their counts "
            "between two cycles. That is Python work holding the GIL while the worker serves pages."
        )
    return text


# --- one explanation per target ---------------------------------------------------------------------


def _upstream(results: Results) -> str:
    one, many = results.windows[0], results.windows[-1]
    return (
        f"1 viewer: {one['sync_cycles']} refresh cycles ({one['sync_cycle_requests']} requests each); "
        f"{many['viewers']} viewers: {many['sync_cycles']} cycles ({many['sync_cycle_requests']}). "
        "Page views never call the upstream themselves (the lease coalesces them), so the difference is "
        "in the number of cycles per window or in the requests per cycle: a cycle starts when a page is "
        "viewed more than REFRESH_INTERVAL after the previous one ended, so continuous traffic starts "
        "cycles sooner than one viewer with pauses, and the active batches a cycle must retrieve change "
        "over time. Suggested fix: schedule refreshes on a fixed period (next due = previous start + "
        "REFRESH_INTERVAL) instead of relative to the last view, so the number of cycles no longer "
        "depends on the traffic."
    )


def _errors(results: Results) -> str:
    many = results.windows[-1]
    kinds = ", ".join(f"{k}: {v}" for k, v in many["error_kinds"].items())
    return (
        f"Errors by page and kind: {kinds}. With {results.options.workers} sync workers each request waits "
        f"for a free worker; at p99 {_ms(many['all'].p99)} the slowest requests approach the client's 30 s "
        "timeout or gunicorn's. Suggested fix: make the pages cheaper (see the latency misses) or add "
        "workers/threads (`--threads` with the gthread worker)."
    )


def _list_ratio(results: Results) -> str:
    p = results.profiles.get("list")
    if not p:
        return "The list page was not profiled."
    sql_total = sum(q["seconds"] for q in p["queries"])
    slowest = sorted(p["queries"], key=lambda q: -q["seconds"])[:3]
    render_share = p["render_seconds"] / p["per_view_seconds"] if p["per_view_seconds"] else math.nan
    mirrored = results.sync.get("first", {}).get("mirrored", 0)
    lookups = next((r["calls"] for r in p["by_self"] if r["function"].endswith("(_resolve_lookup)")), None)
    text = (
        f"In-process the list view takes {_ms(p['median_seconds'])} (median), against a floor of "
        f"{_ms(results.latency['summaries']['ping'].median)} for the whole HTTP round trip of a trivial "
        f"view. Its {len(p['queries'])} queries take {_ms(sql_total)} with their rows fetched; the "
        "slowest: " + ", ".join(f"{_query_kind(q['sql'])} {_ms(q['seconds'])}" for q in slowest) + ". "
    )
    aggregates = sum(q["seconds"] for q in p["queries"] if "GROUP BY" in q["sql"])
    if aggregates >= p["median_seconds"] / 5:
        text += (
            "The aggregates (the tab counts and summary of `filters.tabs_and_summary`, and any other "
            "per-page totals) run over every batch that matches the filters except the status: all "
            f"{mirrored:,} mirrored batches here, each tested with `metadata_text LIKE '%owner%'`, which "
            "no B-tree index can serve, in a table whose rows also carry the raw JSON. "
        )
    heavy = _heavy_calls(p)
    if heavy:
        text += f"In the profile, the app's heaviest calls below the view: {heavy}. "
    text += (
        f"Template rendering is {render_share:.0%} of the profiled view (`render_to_string`) for 50 "
        "rows, each with includes, `timeago`, `duration` and number filters"
        + (f" ({lookups:,.0f} variable lookups per view)" if lookups else "")
        + ". Already done: the tab counts, the summary and the cost totals come from one aggregate; the "
        "rendered results block is cached per filters, role and each account's mirror version (bumped by "
        "`store_batches`); the page around it is kept per user with holes for the results, the sync "
        "banner (rendered at most once a second), the CSRF token and the CSP nonce (`listing.page`); "
        "and a signed-in request reads its session, user and permissions in one query "
        "(`batches.sessions`). So between two changes of the mirror a view runs two queries: the "
        "session with its user and permissions, and the accounts' SyncState rows. "
        + _signed_in_share(results, "list")
        + "What remains is Django's request machinery, the session's signature check and the CSRF "
        "token's masking (both per request), filling the holes, and sending 66 KB. Going further would "
        "take keeping users and their permissions across requests, which would delay the effect of "
        "taking a role away: a trade this project does not make."
    )
    return text


def _signed_in_share(results: Results, kind: str) -> str:
    """How much of a page's ratio the trivial view already reaches once it is signed in."""
    s: dict[str, LatencySummary] = results.latency.get("summaries", {})
    if "signed-in ping" not in s:
        return ""
    floor, signed_in, page = s["ping"].median, s["signed-in ping"].median, s[kind].median
    return (
        "The trivial view behind the same sign-in check (`/bench/ping-signed-in`: the session with the "
        f"user and the permissions) takes {_ms(signed_in)}, {signed_in / floor:.2f}x the floor by itself; "
        "the "
        f"{kind} adds {_ms(page - signed_in)} to that ({(page - signed_in) / floor:.2f}x). "
    )


def _fragment_ratio(results: Results) -> str:
    p = results.profiles.get("fragment")
    pages = _largest_query_run(results)
    text = (
        "The benchmark polls as htmx does, with the version of the fragment shown, so most polls find the "
        "batch unchanged and get 204. Such a poll is answered before the request is signed in "
        "(`views.monitor.unchanged_poll`: the version is keyed with the SECRET_KEY and lasts one 30 s "
        "bucket, and a 204 shows nothing), after one query: the batch's versioned fields "
        "(`Batch.objects.poll_state`, a prepared SELECT of a dozen columns, no instance built); the "
        "mirror's freshness is known in each worker until it may have gone stale, so SyncState is not "
        "read. No context is built and nothing is rendered. "
    )
    if p:
        text += (
            f"In-process such a poll takes {_ms(p['median_seconds'])} (median), its {len(p['queries'])} "
            f"quer{'y' if len(p['queries']) == 1 else 'ies'} {_ms(sum(q['seconds'] for q in p['queries']))}. "
        )
    if pages:
        text += f"A full render (after a change) runs these: {_query_kinds(pages['live fragment']['sql'])}. "
    text += (
        "What separates such a poll from the floor is that lookup and Django's request machinery around "
        "it (URL resolving, the view's decorators). Suggested fix: compare the profile with the floor's "
        "and look for what grew; a poll that signs the request in again (a `cancelling` batch, or a "
        "version not current) costs the signed-in ping's share on top."
    )
    return text


def _list_p99(results: Results) -> str:
    lat = results.latency
    during: LatencySummary = lat["by_refresh"]["list"][True]
    outside: LatencySummary = lat["by_refresh"]["list"][False]
    split = (
        f"List requests served while a background refresh cycle ran: median {_ms(during.median)}, p99 "
        f"{_ms(during.p99)} ({during.count} requests); the others: median {_ms(outside.median)}, p99 "
        f"{_ms(outside.p99)} ({outside.count}). "
    )
    if during.count and outside.count:
        split += f"A refresh makes a list view {during.median / outside.median:.1f}x slower at the median. "
    if during.count and outside.p99 < 0.1 <= during.p99:
        lead = "The slow tail comes with the background refresh. "
    else:
        lead = (
            "The refresh cycles explain part of the tail: the list's median leaves little headroom, so any "
            "pause — a refresh in either worker, garbage collection, other work on this 2-core machine "
            f"(1-minute load average {results.load_average[0]:.2f} when the run started) — pushes a view "
            "past 100 ms. "
        )
    return (
        lead
        + split
        + _refresh_cost(results)
        + " Meanwhile the request thread of that worker waits for the GIL, and on 2 cores the other "
        "worker shares the CPU with it. Suggested fix: take the cycles out of the web workers: run the "
        "`sync_batches` worker with SYNC_ON_DEMAND=false, so that page views never refresh the mirror."
    )


def _queries_list(results: Results) -> str:
    pages = _largest_query_run(results)
    sql = pages["list"]["sql"] if pages else []
    kinds = [_query_kind(q) for q in sql]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    text = f"The list's {len(sql)} queries: {', '.join(kinds)}."
    if repeated:
        text += f" Queried more than once: {', '.join(repeated)}."
    groups = [_group_by(q) for q in sql if "GROUP BY" in q]
    if len(groups) > 1:
        columns = list(dict.fromkeys(c for g in groups for c in g))
        text += (
            f" {len(groups)} aggregates scan the same filtered batches: one `GROUP BY {', '.join(columns)}` "
            "(`listing.totals`) could feed them all."
        )
    return text


def _queries_equal(results: Results) -> str:
    n_small, n_large = sorted(results.queries)
    small, large = results.queries[n_small]["pages"], results.queries[n_large]["pages"]
    texts = []
    for name in small:
        a, b = small[name]["sql"], large[name]["sql"]
        if len(a) == len(b):
            continue
        repeated = _most_repeated(b)
        texts.append(
            f"`{name}`: {len(a)} queries at {n_small:,} rows, {len(b)} at {n_large:,}; the most repeated "
            f"query ({repeated[1]} times) is `{repeated[0][:150]}`: a query per row (N+1). Suggested fix: "
            "`select_related`/`prefetch_related`, or one query for the whole page."
        )
    return " ".join(texts)


def _sync_first(results: Results) -> str:
    first = results.sync["first"]
    return (
        f"The first import made {first['requests']} requests ({first['by_route']}) for "
        f"{first['upstream']:,} batches: more than one list page per 100 batches. Check that the sync asks "
        "for `limit=100` (SYNC_PAGE_SIZE) and does not retrieve batches a page already returned."
    )


def _sync_incremental(results: Results) -> str:
    inc = results.sync["incremental"]
    return (
        f"The incremental cycle made {inc['requests']} requests ({inc['by_route']}) where "
        f"{inc['minimum']} would do ({inc['optimum']} at best). Check the top pass's stopping rule "
        "(`known_active_after`) and which active batches `refresh_unreached` retrieves."
    )


def _payload_live(results: Results) -> str:
    live = results.payload["live fragment (poll)"]
    parts = live["parts"]
    return (
        f"The live fragment is the whole live section of the detail page, sent whenever the batch changed: "
        f"{parts['svg']:,} bytes of inline SVG (the chart, up to 240 points, and the progress bar), "
        f"{parts['tables']:,} "
        f"bytes of tables (timeline, usage, files, errors) and {parts['rest']:,} bytes of status, "
        f"progress, rate, ETA and cancel controls, {live['gzip_bytes']:,} bytes as sent gzipped; an "
        "unchanged batch already gets 204. Suggested fix: poll only the part that changes with the "
        "counts (status, progress bar, counts, rate/ETA: a few hundred bytes) and refresh the chart and "
        "the tables when the status or the sample count changes."
    )


def _payload_row(results: Results) -> str:
    row = results.payload["row fragment (poll)"]
    return (
        f"The row fragment is {row['bytes']:,} bytes ({row['gzip_bytes']:,} as sent gzipped; an "
        "unchanged row already gets 204). Suggested fix: leave out of the row what only the detail page "
        "needs (the inline SVG progress bar could be a CSS width)."
    )


def _cancel(results: Results) -> str:
    trials = [t for t in results.cancel["trials"] if "until_refresh" in t]
    o = results.options
    text = (
        "While a batch is `cancelling`, its row and live polls retrieve that one batch "
        "(`sync.refresh_cancelling`: one `GET /batches/{id}` per POLL_INTERVAL, whoever watches) and "
        "wait up to `sync.CANCELLING_WAIT_SECONDS` for it, so a poll shows `cancelled` as soon as the "
        "upstream says so, unless the upstream answers slower than that wait; otherwise the "
        f"account-wide refresh (REFRESH_INTERVAL = {o.refresh_interval} s) brings it. "
    )
    if trials:
        text += (
            f"Over {_plural(len(trials), 'cancel')}, after the upstream turned `cancelled` it took "
            f"{_median([t['until_refresh'] for t in trials]):.2f} s (median) until a refresh cycle started, "
            f"then {_median([t['then_shown'] for t in trials]):.2f} s until a poll showed what it stored. "
        )
    return text + _refresh_cost(results)


# --- helpers -----------------------------------------------------------------------------------------


def _group_by(sql: str) -> list[str]:
    """An aggregate's grouping columns: the plain columns of its SELECT list (Django writes `GROUP BY 1`)."""
    select = re.match(r"SELECT (.*?) FROM ", sql, re.S)
    return re.findall(r'(?:^|, )"\w+"\."(\w+)"', select.group(1)) if select else []


def _heavy_calls(profile: dict[str, Any]) -> str:
    """The app's functions that take at least a tenth of the profiled view, below the view itself."""
    rows = profile["app_cumulative"]
    if not rows:
        return ""
    view = rows[0]["cumulative"]
    heavy = [r for r in rows[1:] if r["cumulative"] >= view / 10]
    return ", ".join(f"`{r['function']}` {_ms(r['cumulative'])} of {_ms(view)}" for r in heavy)


def _largest_query_run(results: Results) -> dict[str, Any]:
    return results.queries[max(results.queries)]["pages"] if results.queries else {}


# (what the SQL contains, what to call it): the first match names a query.
QUERY_KINDS = (
    ('"auth_group', "the groups' permissions"),
    ("auth_user_user_permissions", "the user's permissions"),
    ("GROUP BY", "an aggregate (GROUP BY)"),
    ('FROM "auth_user"', "the user"),
    ("batches_syncstate", "SyncState"),
    ("batches_batchsample", "the progress samples"),
    ("batches_auditentry", "audit entries"),
    ("batches_batch", "batches"),
    ("django_session", "the session"),
)


def _query_kind(sql: str) -> str:
    if '"batches_session"' in sql:
        return "the session with its user and permissions"  # batches.sessions' one query
    if "auth_user_user_permissions" in sql and '"auth_group' in sql:
        return "the permissions (the user's and the groups')"  # batches.auth.ModelBackend's one query
    known = next((label for needle, label in QUERY_KINDS if needle in sql), None)
    if known:
        return known
    table = re.search(r'FROM "(\w+)"', sql)
    return f"`{table.group(1)}`" if table else "other"


def _query_kinds(sql: list[str]) -> str:
    return ", ".join(_query_kind(q) for q in sql)


def _most_repeated(sql: list[str]) -> tuple[str, int]:
    counts: dict[str, int] = {}
    for query in sql:
        shape = re.sub(r"\b\d+\b|'[^']*'", "?", query)
        counts[shape] = counts.get(shape, 0) + 1
    return max(counts.items(), key=lambda item: item[1], default=("", 0))


EXPLAIN: dict[str, Callable[[Results], str]] = {
    "upstream": _upstream,
    "errors": _errors,
    "list_ratio": _list_ratio,
    "fragment_ratio": _fragment_ratio,
    "list_p99": _list_p99,
    "queries_list": _queries_list,
    "queries_equal": _queries_equal,
    "sync_first": _sync_first,
    "sync_incremental": _sync_incremental,
    "payload_live": _payload_live,
    "payload_row": _payload_row,
    "cancel": _cancel,
}
