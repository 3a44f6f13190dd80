"""What the list page shows around its rows, from one aggregate, and the cache of its results.

One `GROUP BY status, model` over the batches matching the filters (all but the tab) feeds the tab
counts and the summary (per status), the cost estimate (token sums per model, the current tab) and
the operators' "Cancel all N" count (cancellable and unclaimed, the current tab).

The rendered results (tabs, summary, table, pager) are cached per filters, role (operators see
checkboxes and Cancel buttons) and mirror version: `SyncState.mirror_version` of every account,
bumped by `sync.store_batches` in the transaction that changed the mirror, so a change shows at once
in every process. LIST_CACHE_SECONDS bounds how stale the relative times ("3 min ago") get.
Nothing user-specific (name, CSRF token) is inside the results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet, Sum

from batches.cancel import unclaimed
from batches.costs import CostSummary, PriceTable, summarize_usage
from batches.filters import STATUS_SUMS, BatchFilters, Summary, Tab, tabs_and_summary_of
from batches.models import CANCELLABLE_STATUSES, Batch, SyncState
from batches.rows import RowLoader

CACHE_PREFIX = "batches:list-results:"

_WITH_USAGE = Q(input_tokens__isnull=False, output_tokens__isnull=False)
USAGE_SUMS = {
    "priced_n": Count("id", filter=_WITH_USAGE),
    "input": Sum("input_tokens", filter=_WITH_USAGE),
    "cached": Sum("cached_tokens", filter=_WITH_USAGE),
    "output": Sum("output_tokens", filter=_WITH_USAGE),
}


@dataclass
class Totals:
    tabs: list[Tab]
    summary: Summary
    cost: CostSummary
    # Cancellable batches without a claim in flight, in the current tab: bulk.count_for(filters).
    cancellable: int


def totals(
    filters: BatchFilters, queryset: QuerySet[Batch], prices: PriceTable, *, cancellable: bool = False
) -> Totals:
    """One query whatever the number of batches (the prices come from the caller)."""
    sums: dict[str, Any] = {**STATUS_SUMS, **USAGE_SUMS}
    if cancellable:
        sums["cancellable"] = Count("id", filter=unclaimed())
    grouped = filters.matching(queryset).order_by().values("status", "model").annotate(**sums)
    rows: list[dict[str, Any]] = [dict(row) for row in grouped]
    tabs, summary = tabs_and_summary_of(filters, rows)
    in_tab = [row for row in rows if filters.shows(row["status"])]
    # Per model across the tab's statuses; the estimate is linear in the sums.
    usage: dict[str, dict[str, Any]] = {}
    for row in in_tab:
        if not row["priced_n"]:
            continue
        per_model = usage.setdefault(
            row["model"], {"model": row["model"], "n": 0, "input": 0, "cached": 0, "output": 0}
        )
        per_model["n"] += row["priced_n"]
        for name in ("input", "cached", "output"):
            per_model[name] += row[name] or 0
    cost = summarize_usage(usage.values(), prices.prices)
    count = 0
    if cancellable:
        count = sum(row["cancellable"] for row in in_tab if row["status"] in CANCELLABLE_STATUSES)
    return Totals(tabs, summary, cost, count)


# --- the cache of the rendered results ------------------------------------------------------------


def read_states(account_names: list[str]) -> dict[str, SyncState]:
    """The accounts' SyncState rows, one query: for the freshness check, the banner and the key.

    The table has a row per account: reading it whole is cheaper than building the filter, and
    every list view reads it, so through a prepared SELECT (batches/rows.py).
    """
    wanted = set(account_names)
    return {s.account: s for s in _SYNC_STATES.all() if s.account in wanted}


_SYNC_STATES = RowLoader(SyncState, ())


def results_key(
    filters: BatchFilters,
    *,
    operator: bool,
    accounts: list[str],
    states: Mapping[str, SyncState],
    prices: PriceTable,
) -> str | None:
    """The cache key of the rendered results, or None when they must not be cached.

    Not cached while an account has no SyncState row: its mirror has no version to key on.
    """
    if settings.LIST_CACHE_SECONDS <= 0 or any(name not in states for name in accounts):
        return None
    parts = (
        filters.querystring(),  # the valid filters, normalized (order, defaults)
        filters.notes,  # what was ignored, shown above the tabs
        "operator" if operator else "viewer",
        tuple((name, states[name].mirror_version) for name in accounts),
        prices.digest,
        settings.POLL_INTERVAL,
    )
    return CACHE_PREFIX + hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
