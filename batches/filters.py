"""The list page's filters: parsed from GET parameters, validated, and turned into querysets.

Filters live in the URL so a view can be bookmarked and shared. A value that does not parse is
ignored with a note the page shows, never an error: a stale bookmark or a hand-edited URL should
still give a useful page.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast
from urllib.parse import urlencode

from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from batches.models import ACTIVE_STATUSES, Batch

PAGE_SIZE = 50
MAX_QUERY_CHARS = 200
MAX_SHOWN_CHARS = 60
OPTIONS_CACHE_KEY = "batches:filter-options"
OPTIONS_CACHE_SECONDS = 60

# Tab name -> the statuses it shows; None means no status filter.
TABS: dict[str, tuple[str, ...] | None] = {
    "active": ACTIVE_STATUSES,
    "completed": ("completed",),
    "failed": ("failed",),
    "cancelled": ("cancelled",),
    "expired": ("expired",),
    "all": None,
}
DEFAULT_TAB = "all"

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
# `<epoch seconds>[.<fraction>]_<pk>`: the created_at and primary key of the last row shown.
# The fraction keeps the cursor exact when a timestamp has sub-second precision.
_CURSOR_RE = re.compile(r"(\d{1,11})(?:\.(\d{1,6}))?_(\d{1,19})", re.ASCII)


@dataclass(frozen=True)
class Cursor:
    created_at: dt.datetime
    pk: int

    @classmethod
    def after(cls, batch: Batch) -> Cursor:
        return cls(batch.created_at, batch.pk)

    def __str__(self) -> str:
        at = self.created_at.astimezone(dt.UTC)
        seconds = int(at.replace(microsecond=0).timestamp())
        if at.microsecond:
            return f"{seconds}.{at.microsecond:06d}_{self.pk}"
        return f"{seconds}_{self.pk}"

    @classmethod
    def parse(cls, value: str) -> Cursor | None:
        match = _CURSOR_RE.fullmatch(value)
        if match is None:
            return None
        seconds, fraction, pk = match.groups()
        try:
            at = dt.datetime.fromtimestamp(int(seconds), tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
        micro = int((fraction or "0").ljust(6, "0"))
        pk_value = int(pk)
        if pk_value > 2**63 - 1:
            return None
        return cls(at.replace(microsecond=micro), pk_value)


@dataclass(frozen=True)
class BatchFilters:
    """What the list page shows. Only valid values end up here; `notes` says what was dropped."""

    account: str = ""
    model: str = ""
    endpoint: str = ""
    created_from: dt.date | None = None
    created_to: dt.date | None = None
    status: str = DEFAULT_TAB
    q: str = ""
    before: Cursor | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)
    # (parameter, why) for each dropped value: for callers that refuse them instead (the JSON API).
    problems: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, params: Mapping[str, Any], accounts: Iterable[str]) -> BatchFilters:
        notes: list[str] = []
        problems: list[tuple[str, str]] = []

        def text(name: str) -> str:
            value = params.get(name)
            return value.strip() if isinstance(value, str) else ""

        def ignore(name: str, value: str, why: str) -> None:
            shown = value if len(value) <= MAX_SHOWN_CHARS else value[:MAX_SHOWN_CHARS] + "…"
            notes.append(f"Ignored the filter {name}={shown}: {why}")
            problems.append((name, why))

        values: dict[str, Any] = {}
        account = text("account")
        if account:
            if account in set(accounts):
                values["account"] = account
            else:
                ignore("account", account, "no such account")
        # Model and endpoint are matched exactly: an unknown one just matches nothing.
        for name, limit in (("model", 200), ("endpoint", 100)):
            value = text(name)
            if len(value) > limit:
                ignore(name, value, f"longer than {limit} characters")
            elif value:
                values[name] = value
        for name in ("created_from", "created_to"):
            value = text(name)
            if not value:
                continue
            day = _parse_date(value)
            if day is None:
                ignore(name, value, "not a date (expected YYYY-MM-DD)")
            else:
                values[name] = day
        if (
            values.get("created_from")
            and values.get("created_to")
            and values["created_from"] > values["created_to"]
        ):
            ignore("created_to", values.pop("created_to").isoformat(), "before created_from")
        status = text("status")
        if status:
            if status in TABS:
                values["status"] = status
            else:
                ignore("status", status, "not one of " + ", ".join(TABS))
        q = text("q")
        if len(q) > MAX_QUERY_CHARS:
            ignore("q", q, f"longer than {MAX_QUERY_CHARS} characters")
        elif q:
            values["q"] = q
        before = text("before")
        if before:
            cursor = Cursor.parse(before)
            if cursor is None:
                ignore("before", before, "not a page cursor")
            else:
                values["before"] = cursor
        return cls(notes=tuple(notes), problems=tuple(problems), **values)

    # --- queries ---

    def matching(self, queryset: QuerySet[Batch]) -> QuerySet[Batch]:
        """Every filter except the status tab and the page cursor: what the tab counts count."""
        if self.account:
            queryset = queryset.filter(account=self.account)
        if self.model:
            queryset = queryset.filter(model=self.model)
        if self.endpoint:
            queryset = queryset.filter(endpoint=self.endpoint)
        if self.created_from:
            queryset = queryset.filter(created_at__gte=_start_of(self.created_from))
        if self.created_to:
            queryset = queryset.filter(created_at__lt=_start_of(self.created_to + dt.timedelta(days=1)))
        if self.q:
            queryset = queryset.filter(search_q(self.q))
        return queryset

    def shows(self, status: str) -> bool:
        """Whether the selected tab holds batches of this status (in_tab, for rows in hand)."""
        statuses = TABS[self.status]
        return statuses is None or status in statuses

    def in_tab(self, queryset: QuerySet[Batch]) -> QuerySet[Batch]:
        statuses = TABS[self.status]
        return queryset if statuses is None else queryset.filter(status__in=statuses)

    def page(self, queryset: QuerySet[Batch]) -> QuerySet[Batch]:
        """Newest first, from the cursor on: a keyset page, so deep pages cost what the first does."""
        queryset = self.in_tab(self.matching(queryset))
        if self.before is not None:
            at, pk = self.before.created_at, self.before.pk
            queryset = queryset.filter(Q(created_at__lt=at) | Q(created_at=at, pk__lt=pk))
        return queryset.order_by("-created_at", "-id")

    # --- links ---

    @property
    def is_filtered(self) -> bool:
        return bool(
            self.account or self.model or self.endpoint or self.created_from or self.created_to or self.q
        )

    def params(self, **overrides: Any) -> dict[str, str]:
        """The valid filters as GET parameters (invalid ones drop out of every link)."""
        current = replace(self, **overrides)
        pairs = {
            "account": current.account,
            "model": current.model,
            "endpoint": current.endpoint,
            "created_from": current.created_from.isoformat() if current.created_from else "",
            "created_to": current.created_to.isoformat() if current.created_to else "",
            "status": "" if current.status == DEFAULT_TAB else current.status,
            "q": current.q,
            "before": str(current.before) if current.before else "",
        }
        return {name: value for name, value in pairs.items() if value}

    def querystring(self, **overrides: Any) -> str:
        return "?" + urlencode(self.params(**overrides))


def search_q(q: str) -> Q:
    """A batch id (or its start, with or without the `batch_` prefix), or metadata text.

    metadata_text holds lower-cased `key=value` lines, so a key, a value or `key=value` all match.
    """
    condition = Q(batch_id__startswith=q) | Q(metadata_text__contains=q.lower())
    if not q.startswith("batch_"):
        # The list shows ids without their prefix; a copied short id should find its batch.
        condition |= Q(batch_id__startswith="batch_" + q)
    return condition


def _parse_date(value: str) -> dt.date | None:
    # fromisoformat alone would also take "20260101" and week dates: the form promises YYYY-MM-DD.
    if not _DATE_RE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _start_of(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


# --- what the page shows around the table ---------------------------------------------------


@dataclass
class Tab:
    name: str
    count: int
    selected: bool
    query: str


@dataclass
class Summary:
    batches: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    tokens: int = 0
    tokens_reported: bool = False


# What the tab counts and the summary add up, per status (and whatever else a caller groups by).
STATUS_SUMS = {
    "n": Count("id"),
    "completed": Sum("request_completed"),
    "failed": Sum("request_failed"),
    "tokens": Sum("total_tokens"),
}


def tabs_and_summary_of(
    filters: BatchFilters, rows: Iterable[Mapping[str, Any]]
) -> tuple[list[Tab], Summary]:
    """The tabs and the summary from STATUS_SUMS rows of `filters.matching`, grouped by status
    (a status may come in several rows, e.g. one per model)."""
    counts: dict[str, int] = {}
    summary = Summary()
    for row in rows:
        status = row["status"]
        counts[status] = counts.get(status, 0) + row["n"]
        if not filters.shows(status):
            continue
        summary.batches += row["n"]
        summary.by_status[status] = summary.by_status.get(status, 0) + row["n"]
        summary.completed += row["completed"] or 0
        summary.failed += row["failed"] or 0
        if row["tokens"] is not None:
            summary.tokens += row["tokens"]
            summary.tokens_reported = True
    summary.by_status = dict(sorted(summary.by_status.items(), key=lambda item: -item[1]))
    tabs = []
    for name, statuses in TABS.items():
        count = sum(counts.values()) if statuses is None else sum(counts.get(s, 0) for s in statuses)
        tabs.append(Tab(name, count, name == filters.status, filters.querystring(status=name, before=None)))
    return tabs, summary


def filter_options() -> dict[str, list[str]]:
    """Models and endpoints seen in the mirror, for the filter menus; a minute old at most."""

    def load() -> dict[str, list[str]]:
        pairs = Batch.objects.order_by().values_list("model", "endpoint").distinct()
        models, endpoints = set(), set()
        for model, endpoint in pairs:
            models.add(model)
            endpoints.add(endpoint)
        return {"models": sorted(models - {""}), "endpoints": sorted(endpoints - {""})}

    # Never None: get_or_set answers what load() made when the cache cannot keep it.
    return cast(dict[str, list[str]], cache.get_or_set(OPTIONS_CACHE_KEY, load, OPTIONS_CACHE_SECONDS))
