"""What the list page shows around its rows, from one aggregate, and the cache of its results.

One `GROUP BY status, model` over the batches matching the filters (all but the tab) feeds the tab
counts and the summary (per status), the cost estimate (token sums per model, the current tab) and
the operators' "Cancel all N" count (cancellable and unclaimed, the current tab).

The rendered results (tabs, summary, table, pager) are cached per filters, role (operators see
checkboxes and Cancel buttons) and mirror version: `SyncState.mirror_version` of every account,
bumped by `sync.store_batches` in the transaction that changed the mirror, so a change shows at once
in every process. LIST_CACHE_SECONDS bounds how stale the relative times ("3 min ago") get.
Nothing user-specific (name, CSRF token) is inside the results.

The page around them is kept too, per user (`page()`): rendered once with holes where each
response needs its own parts, the results, the sync banner, the CSRF token and the CSP nonce.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum
from django.http import HttpRequest
from django.middleware.csp import get_nonce
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.utils.crypto import salted_hmac
from django.utils.safestring import mark_safe

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
    return _key(CACHE_PREFIX, parts)


def _key(prefix: str, parts: tuple[Any, ...]) -> str:
    """A cache key for what depends on `parts` (values whose repr is stable)."""
    return prefix + hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


# --- the page around the results ------------------------------------------------------------------
# Rendered once per user and kept with holes where each response needs its own: the CSRF token,
# the CSP nonce, the sync banner (fresh relative times) and the results (cached apart, per filters).
# The markers are derived from SECRET_KEY: the same in every process sharing the cache, and not
# something text from the upstream could contain.


@functools.cache
def _marker(name: str) -> str:
    return f"batches-{name}-{salted_hmac('batches.listing.page', name, algorithm='sha256').hexdigest()[:32]}"


PAGE_PREFIX = "batches:list-page:"


def page(request: HttpRequest, results: str, banner: str) -> str:
    """The whole list page: the cached page of this user, holes filled, or rendered in full.

    Rendered in full (and not kept) while the request has messages to show: showing them uses
    them up. The key holds everything the page around the results shows of the user.
    """
    if settings.LIST_CACHE_SECONDS <= 0 or len(messages.get_messages(request)):
        return render_to_string(LIST_TEMPLATE, {"results": results, "banner": banner}, request)
    user = request.user
    shown = (user.pk, user.get_username(), user.is_staff, sorted(user.get_all_permissions()))  # type: ignore[union-attr]
    key = _key(PAGE_PREFIX, shown)
    cached = cache.get(key)
    if cached is None:
        holes = {name: mark_safe(_marker(name)) for name in HOLES}  # noqa: S308
        cached = render_to_string(LIST_TEMPLATE, holes, request)
        cache.set(key, cached, settings.LIST_CACHE_SECONDS)
    fills = {
        _marker("results"): results,
        _marker("banner"): banner,
        # Each response's own token and nonce (the CSP header then carries this nonce).
        _marker("csrf_token"): get_token(request),
        _marker("csp_nonce"): str(get_nonce(request)),
    }
    # One pass over the page: what goes in is never searched for markers itself.
    return _holes().sub(lambda found: fills[found.group(0)], cached)


@functools.cache
def _holes() -> re.Pattern[str]:
    return re.compile("|".join(_marker(name) for name in HOLES))


HOLES = ("results", "banner", "csrf_token", "csp_nonce")
LIST_TEMPLATE = "batches/list.html"
