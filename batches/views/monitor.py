"""Monitoring: the batch list, one batch's page, their live fragments, and file downloads.

Every page is served from the mirror. A page view only nudges the sync (which returns at once);
nothing here waits on the upstream except a download, which has to.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.safestring import mark_safe
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseStopPolling

from batches import costs, listing, progress, sync
from batches.accounts import get_account, get_accounts
from batches.auth import can_cancel
from batches.client import BATCH_ID_RE, InvalidIdError, UpstreamError, validate_file_id
from batches.filters import PAGE_SIZE, BatchFilters, Cursor, filter_options
from batches.models import (
    ACTIVE_STATUSES,
    POLL_VERSION_RE,
    TIMESTAMP_FIELDS,
    Batch,
    SyncState,
)
from batches.views import bulk as bulk_views
from batches.views.common import HtmxHttpRequest, get_account_or_404, get_batch_or_404, viewer_required

# The list never needs these, and `raw` (with the errors) can be large: never loaded per row.
LIST_DEFERRED = ("raw", "errors", "metadata", "metadata_text")


# --- sync freshness, for the banner and the "updated … ago" line -----------------------------


@dataclass
class AccountSync:
    name: str
    state: SyncState | None

    @property
    def last_success_at(self) -> Any:
        return self.state.last_success_at if self.state else None

    @property
    def error(self) -> dict[str, Any] | None:
        # last_error is cleared by the next good cycle: when set, the mirror is stale for this reason.
        if self.state is None or not isinstance(self.state.last_error, dict):
            return None
        return self.state.last_error

    @property
    def warning(self) -> str:
        return self.state.last_warning if self.state else ""

    @property
    def importing(self) -> bool:
        return self.state is not None and not self.state.import_complete


def sync_status(account_names: list[str], states: Mapping[str, SyncState] | None = None) -> list[AccountSync]:
    """One query for the accounts the page shows (none when the view has read their states)."""
    if states is None:
        states = listing.read_states(account_names)
    return [AccountSync(name, states.get(name)) for name in account_names]


# The list's sync banner by what it shows: the accounts' states and the second its relative times
# count from. Viewers who keep the page open ask for it many times a second; it changes less often.
_banners: dict[tuple[int, str], str] = {}
SYNC_FIELDS = SyncState._meta.concrete_fields


def list_banner(accounts: list[str], states: Mapping[str, SyncState]) -> str:
    values = [(name, [getattr(states.get(name), f.attname, None) for f in SYNC_FIELDS]) for name in accounts]
    shown = (int(timezone.now().timestamp()), repr(values))
    banner = _banners.get(shown)
    if banner is None:
        context = {"sync_accounts": sync_status(accounts, states)}
        banner = render_to_string("batches/_sync_status.html", context)
        if len(_banners) >= 8:  # earlier seconds' are of no more use
            _banners.clear()
        _banners[shown] = banner
    return banner


# --- the list ---------------------------------------------------------------------------------


@require_GET
@viewer_required
@vary_on_headers("HX-Request")
def batch_list(request: HtmxHttpRequest) -> HttpResponse:
    accounts = sorted(get_accounts())
    # One read of the accounts' SyncState: the freshness check, the banner and the cache key.
    states = listing.read_states(accounts)
    sync.refresh_stale_in_background(states=states)
    filters = BatchFilters.parse(request.GET, accounts)
    operator = can_cancel(request.user)
    prices = costs.cached_prices()
    key = listing.results_key(filters, operator=operator, accounts=accounts, states=states, prices=prices)
    results = cache.get(key) if key else None
    if results is None:
        context = _results_context(request, filters, accounts, operator, prices)
        results = render_to_string("batches/list.html#results", context, request)
        if key:
            cache.set(key, results, settings.LIST_CACHE_SECONDS)
    # Tabs, pager and filter form swap only the results; a history restore needs the whole page.
    if request.htmx and not request.htmx.history_restore_request:
        return HttpResponse(results)
    return HttpResponse(listing.page(request, mark_safe(results), list_banner(accounts, states)))  # noqa: S308


def _results_context(
    request: HtmxHttpRequest,
    filters: BatchFilters,
    accounts: list[str],
    operator: bool,
    prices: costs.PriceTable,
) -> dict[str, Any]:
    """What `batches/list.html#results` needs: the rows, and one aggregate for everything else."""
    mirror = Batch.objects.all()
    # One row more than shown tells whether an older page exists, without a COUNT.
    rows = list(filters.page(mirror).defer(*LIST_DEFERRED)[: PAGE_SIZE + 1])
    batches, older = rows[:PAGE_SIZE], len(rows) > PAGE_SIZE
    totals = listing.totals(filters, mirror, prices, cancellable=operator)
    return {
        "filters": filters,
        "batches": batches,
        "tabs": totals.tabs,
        "summary": totals.summary,
        "options": filter_options(),
        "accounts": accounts,
        "older_query": filters.querystring(before=Cursor.after(batches[-1])) if older else "",
        "newest_query": filters.querystring(before=None) if filters.before else "",
        "cost": totals.cost,
        "where": "row",
        **bulk_views.list_context(filters, operator=operator, count=totals.cancellable),
    }


def row_context(request: HtmxHttpRequest, batch: Batch) -> dict[str, Any]:
    """What `batches/list.html#row` needs; the cancel view adds cancel_error / cancel_notice."""
    return {
        "batch": batch,
        "user_can_cancel": can_cancel(request.user),
        "where": "row",
    }


def unchanged_poll(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer a poll that finds its batch unchanged with 204, before the request is signed in.

    Most polls are such polls, and signing a request in (the session, the user, the permissions)
    costs more than the rest of the answer. It is safe to skip for a 204 because the version sent
    must be one this server gave out, in a page or a fragment, to a viewer of this batch, within
    the current POLL_VERSION_SECONDS bucket (the digest is keyed with the SECRET_KEY), and a 204 shows
    nothing. So someone signed out or stripped of the viewer role meanwhile learns only that
    nothing changed, and at most until the bucket ends: anything else (a change, the next bucket,
    a `cancelling` batch, whose polls also refresh it) goes through the sign-in and the
    permission check like every other request.
    """

    @functools.wraps(view)
    def wrapper(request: HtmxHttpRequest, account: str, batch_id: str) -> HttpResponse:
        version = request.GET.get("v", "")
        # Only what could be a version and a batch is looked up before the sign-in.
        if (
            POLL_VERSION_RE.fullmatch(version)
            and BATCH_ID_RE.fullmatch(batch_id)
            and (upstream := get_account(account)) is not None
        ):
            state = Batch.objects.poll_state(account, batch_id)
            if state and state[0] in UNCHANGED_POLL_STATUSES and constant_time_compare(state[1], version):
                sync.refresh_stale_in_background([upstream])
                return HttpResponse(status=204)
        return view(request, account, batch_id)

    return wrapper


# Statuses whose unchanged polls unchanged_poll answers: not a terminal one (its fragment does not
# poll), nor `cancelling` (its poll claims a refresh, sync.refresh_cancelling).
UNCHANGED_POLL_STATUSES = frozenset(ACTIVE_STATUSES) - {"cancelling"}


@require_GET
@unchanged_poll
@viewer_required
@gzip_page  # fragments carry no secret (no CSRF token), so compressing them is safe
def batch_row(request: HtmxHttpRequest, account: str, batch_id: str) -> HttpResponse:
    return _poll(request, account, batch_id, "batches/list.html#row", row_context, defer=LIST_DEFERRED)


# --- one batch --------------------------------------------------------------------------------


def live_context(request: HtmxHttpRequest, batch: Batch) -> dict[str, Any]:
    """What `batches/detail.html#live` needs; the cancel view adds cancel_error / cancel_notice."""
    now = timezone.now()
    points = progress.load_points(batch)
    return {
        "batch": batch,
        "now": now,
        "stuck_reason": batch.get_stuck_reason(now),
        "timeline": batch.timeline(),
        "points": points,
        "estimate": progress.estimate(batch, points, now),
        "cost": costs.batch_cost(batch),
        "timestamps": [(name, getattr(batch, name)) for name in TIMESTAMP_FIELDS],
        "user_can_cancel": can_cancel(request.user),
        "where": "detail",
    }


@require_GET
@viewer_required
def batch_detail(request: HtmxHttpRequest, account: str, batch_id: str) -> HttpResponse:
    # The lookup first: a malformed or unknown URL gets its 404 without setting off any sync.
    batch = get_batch_or_404(account, batch_id)
    upstream = get_account_or_404(account)
    # One read of the account's SyncState: the freshness check and the banner.
    states = listing.read_states([account])
    sync.refresh_stale_in_background([upstream], states=states)
    context = live_context(request, batch)
    context.update(
        {
            "console_url": upstream.batch_console_url(batch.batch_id),
            "object_type": batch.raw.get("object", "") if isinstance(batch.raw, dict) else "",
            # Pretty-printed and autoescaped in a <pre>: upstream text stays text.
            "raw_json": json.dumps(batch.raw, indent=2, ensure_ascii=False),
            "metadata_items": sorted((batch.metadata or {}).items()),
            "sync_accounts": sync_status([account], states),
        }
    )
    return render(request, "batches/detail.html", context)


@require_GET
@unchanged_poll
@viewer_required
@gzip_page  # fragments carry no secret (no CSRF token), so compressing them is safe
def batch_live(request: HtmxHttpRequest, account: str, batch_id: str) -> HttpResponse:
    # The live part shows the errors but never the raw object.
    return _poll(request, account, batch_id, "batches/detail.html#live", live_context, defer=("raw",))


def _poll(
    request: HtmxHttpRequest,
    account: str,
    batch_id: str,
    template: str,
    context: Callable[[HtmxHttpRequest, Batch], dict[str, Any]],
    *,
    defer: tuple[str, ...],
) -> HttpResponse:
    """A polled fragment. The poll sends the version of the fragment it shows (`hx-vals`): while
    the batch is unchanged, 204 tells htmx to keep it (most polls get theirs earlier, from
    unchanged_poll). At a terminal status, 286 tells htmx to stop; the fragment itself then
    carries no trigger either, since an outerHTML swap of a triggering element would restart it."""
    # The lookup first: a malformed or unknown URL gets its 404 without setting off any sync.
    # Read whole (but `defer`): unchanged_poll has answered the polls that need less.
    batch = get_batch_or_404(account, batch_id, defer=defer)
    upstream = get_account_or_404(account)
    if sync.refresh_cancelling(upstream, batch):
        batch = get_batch_or_404(account, batch_id, defer=defer)
    sync.refresh_stale_in_background([upstream])
    if not batch.is_terminal and constant_time_compare(request.GET.get("v", ""), batch.poll_version()):
        return HttpResponse(status=204)
    html = render_to_string(template, context(request, batch), request)
    return HttpResponseStopPolling(html) if batch.is_terminal else HttpResponse(html)


# --- downloads --------------------------------------------------------------------------------


@require_GET
@viewer_required
def file_download(request: HtmxHttpRequest, account: str, batch_id: str, file_id: str) -> HttpResponseBase:
    """Stream a batch's output or error file from the upstream, without keeping it here."""
    upstream = get_account_or_404(account)
    batch = get_batch_or_404(account, batch_id, defer=LIST_DEFERRED)
    try:
        validate_file_id(file_id)
    except InvalidIdError:
        raise Http404("Not a file id.") from None
    # Only this batch's own files: the dashboard is not a proxy to every file of the account.
    kinds = {batch.output_file_id: "output", batch.error_file_id: "errors"}
    kinds.pop("", None)
    if file_id not in kinds:
        raise Http404("Not a file of this batch.")
    client = sync.get_client(upstream)
    try:
        content = client.open_file_content(file_id)
    except UpstreamError as exc:
        client.close()
        context = {"batch": batch, "file_id": file_id, "kind": kinds[file_id], "error": exc}
        status = 404 if exc.kind == "not_found" else 502
        return render(request, "batches/_download_error.html", context, status=status)
    # Handing over the FileContent itself (it iterates in 64 KiB chunks and has close()) makes the
    # response close it, and with it the upstream connection, when done or when the client goes away
    # (a generator that never started would not run its cleanup).
    response = StreamingHttpResponse(content, content_type="application/jsonl")
    response["Content-Disposition"] = f'attachment; filename="{batch.batch_id}-{kinds[file_id]}.jsonl"'
    if content.content_length is not None:
        response["Content-Length"] = str(content.content_length)
    return response
