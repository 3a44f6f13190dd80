"""The audit page and its export: who cancelled what, when, why, and what the upstream said."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

from django import forms
from django.db.models import QuerySet
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from batches.accounts import ACCOUNT_NAME_RE
from batches.audit import attach_reached
from batches.models import AuditEntry
from batches.views.common import HtmxHttpRequest, audit_viewer_required

PAGE_SIZE = 50
# Every column, hashes included, so an export can be checked against the chain elsewhere.
EXPORT_FIELDS = [
    "seq", "at", "event", "outcome", "actor_id", "actor_username", "actor_email", "account",
    "batch_id", "status_before", "status_after", "reason", "client_ip", "user_agent", "http_status",
    "error_type", "error_code", "error_message", "request_id", "observed_at", "prev_hash", "entry_hash",
]  # fmt: skip
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class AuditFilters(forms.Form):
    """The page's GET filters. An invalid value is dropped (and named in a note), never a 400."""

    user = forms.CharField(required=False, max_length=150, strip=True)
    account = forms.RegexField(required=False, regex=ACCOUNT_NAME_RE, max_length=40)
    batch = forms.RegexField(required=False, regex=r"\A[A-Za-z0-9_-]{1,128}\Z", label="Batch id")
    event = forms.ChoiceField(required=False, choices=[("", "any"), *AuditEntry.Event.choices])
    outcome = forms.ChoiceField(required=False, choices=[("", "any"), *AuditEntry.Outcome.choices])
    date_from = forms.DateField(required=False, label="From")
    date_to = forms.DateField(required=False, label="To")
    before = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def apply(self, entries: QuerySet[AuditEntry]) -> QuerySet[AuditEntry]:
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        if data.get("user"):
            entries = entries.filter(actor_username=data["user"])
        if data.get("account"):
            entries = entries.filter(account=data["account"])
        if data.get("batch"):
            # A prefix is enough: people paste the start of an id.
            entries = entries.filter(batch_id__startswith=data["batch"])
        if data.get("event"):
            entries = entries.filter(event=data["event"])
        if data.get("outcome"):
            entries = entries.filter(outcome=data["outcome"])
        if data.get("date_from"):
            entries = entries.filter(at__gte=_day_start(data["date_from"]))
        if data.get("date_to"):
            # Inclusive: everything up to the end of that (local) day.
            entries = entries.filter(at__lt=_day_start(data["date_to"] + dt.timedelta(days=1)))
        return entries

    def notes(self) -> list[str]:
        return [
            f"Ignored the {self[name].label.lower()} filter: {' '.join(str(e) for e in errors)}"
            for name, errors in self.errors.items()
            if name in self.fields
        ]

    def querystring(self, **overrides: Any) -> str:
        """The valid filters as a query string (invalid ones are not carried along)."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        params = {k: v for k, v in data.items() if v not in (None, "") and k != "before"}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return "&".join(f"{k}={_quote(v)}" for k, v in params.items())


def _quote(value: Any) -> str:
    return quote(value.isoformat() if isinstance(value, dt.date) else str(value), safe="")


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def _filtered(request: HtmxHttpRequest) -> tuple[AuditFilters, QuerySet[AuditEntry]]:
    filters = AuditFilters(request.GET)
    filters.is_valid()  # fills cleaned_data with the valid fields; errors become notes
    return filters, filters.apply(AuditEntry.objects.all())


@require_GET
@audit_viewer_required
def audit_list(request: HtmxHttpRequest) -> HttpResponse:
    filters, entries = _filtered(request)
    before = filters.cleaned_data.get("before")
    if before:
        entries = entries.filter(seq__lt=before)
    # Keyset pagination on seq, newest first: one row more than shown says whether there is more.
    rows = list(entries.order_by("-seq")[: PAGE_SIZE + 1])
    page, older = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    context = {
        "filters": filters,
        "notes": filters.notes(),
        "entries": attach_reached(page),
        "older_href": "?" + filters.querystring(before=page[-1].seq) if older else "",
        "newest_href": "?" + filters.querystring() if before else "",
        "export_query": filters.querystring(),
        "any_filter": bool(filters.querystring()),
    }
    return render(request, "audit/list.html", context)


@require_GET
@audit_viewer_required
def audit_export(request: HtmxHttpRequest, fmt: str) -> StreamingHttpResponse:
    """The filtered entries, oldest first, streamed: any size without holding it in memory."""
    if fmt not in ("csv", "jsonl"):
        raise Http404("Export as csv or jsonl.")
    _, entries = _filtered(request)
    rows = entries.order_by("seq").values(*EXPORT_FIELDS).iterator(chunk_size=1000)
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_jsonl_lines(rows), content_type="application/jsonl; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response


class _Echo:
    """csv.writer wants a file; this one hands each line back instead of keeping it."""

    def write(self, value: str) -> str:
        return value


def csv_cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _csv_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in rows:
        yield writer.writerow([csv_cell(row[name]) for name in EXPORT_FIELDS])


def _jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps({k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in row.items()}) + "\n"


def _iso(value: dt.datetime) -> str:
    # The same spelling the hash uses, so an exported line can be re-hashed as is.
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
