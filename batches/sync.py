"""Keeping the local mirror in step with the upstream, at the minimum number of requests.

One cycle for one account:

1. Page the list newest first. Pages of new batches are stored as they come. At the first page
   that reaches batches already mirrored, stop, unless the next page holds at least two known
   active batches (one list request then refreshes more than one retrieve would).
2. While the first import is incomplete, continue it from its saved cursor, page by page,
   saving the cursor after each page, so an interrupted import resumes where it stopped.
3. Retrieve individually every mirrored non-terminal batch that the pages did not reach.

So a cycle costs at most ceil(new / page size) + 1 list requests + the active batches not
reached, and never more list pages than retrieves they save.

Refreshes are coalesced across processes by a lease on the account's SyncState row, taken with
one conditional UPDATE: whoever updates the row runs the cycle, everyone else serves the
snapshot. A failing upstream is backed off exponentially (or as long as it asks), and the error
is kept for the banner while the last good data stays.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.dispatch import Signal
from django.utils import timezone

from batches.accounts import Account, get_accounts
from batches.client import BATCH_ID_RE, UpstreamClient, UpstreamError, longest_call_seconds
from batches.models import ACTIVE_STATUSES, TERMINAL_STATUSES, TIMESTAMP_FIELDS, Batch, BatchSample, SyncState

log = logging.getLogger("batches.sync")

# Sent after commit for every mirrored batch whose status changed: (batch, old_status).
batch_status_changed = Signal()

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 300.0


def get_client(account: Account) -> UpstreamClient:
    return UpstreamClient(
        account,
        connect_timeout=settings.UPSTREAM_CONNECT_TIMEOUT,
        read_timeout=settings.UPSTREAM_READ_TIMEOUT,
        max_retries=settings.UPSTREAM_MAX_RETRIES,
    )


# --- Turning untrusted upstream JSON into model fields ---------------------------------------


def _ts(value: Any) -> dt.datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _errors(value: Any) -> list[dict[str, Any]] | None:
    data = value.get("data") if isinstance(value, dict) else None
    if not isinstance(data, list):
        return None
    return [
        {
            "code": _text(e.get("code"), 200),
            "message": _text(e.get("message"), 2000),
            "param": _text(e.get("param"), 200) or None,
            "line": _int(e.get("line")),
        }
        for e in data
        if isinstance(e, dict)
    ]


def _metadata(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k)[:64]: str(v)[:512] for k, v in list(value.items())[:16]}


def batch_fields(obj: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    counts = _dict(obj.get("request_counts"))
    usage = _dict(obj.get("usage"))
    in_details = _dict(usage.get("input_tokens_details"))
    out_details = _dict(usage.get("output_tokens_details"))
    metadata = _metadata(obj.get("metadata"))
    return {
        "status": _text(obj.get("status"), 20),
        "endpoint": _text(obj.get("endpoint"), 100),
        "model": _text(obj.get("model"), 200),
        "completion_window": _text(obj.get("completion_window"), 20),
        "input_file_id": _text(obj.get("input_file_id"), 128),
        "output_file_id": _text(obj.get("output_file_id"), 128),
        "error_file_id": _text(obj.get("error_file_id"), 128),
        "created_at": _ts(obj.get("created_at")) or now,
        **{name: _ts(obj.get(name)) for name in TIMESTAMP_FIELDS if name != "created_at"},
        "request_total": _int(counts.get("total")),
        "request_completed": _int(counts.get("completed")),
        "request_failed": _int(counts.get("failed")),
        "input_tokens": _int(usage.get("input_tokens")),
        "cached_tokens": _int(in_details.get("cached_tokens")),
        "output_tokens": _int(usage.get("output_tokens")),
        "reasoning_tokens": _int(out_details.get("reasoning_tokens")),
        "total_tokens": _int(usage.get("total_tokens")),
        "errors": _errors(obj.get("errors")),
        "metadata": metadata,
        "description": (metadata or {}).get("description") or (metadata or {}).get("batch_description", ""),
        "metadata_text": "\n".join(f"{k}={v}" for k, v in (metadata or {}).items()).lower(),
        "raw": obj,
    }


# --- Storing pages -------------------------------------------------------------------------


@dataclass
class PageResult:
    new: int = 0


def store_batches(
    account: str, objects: Iterable[dict[str, Any]], now: dt.datetime | None = None
) -> PageResult:
    """Upsert upstream Batch objects in one transaction; sample progress; signal status changes.

    The rows are read and written in one transaction, locked (SELECT ... FOR UPDATE; SQLite's
    IMMEDIATE transactions serialize writers anyway): two processes storing the same change at
    once (the sync and a poll's refresh of a cancelling batch) signal its transition once.
    """
    now = now or timezone.now()
    objects = [o for o in objects if isinstance(o.get("id"), str) and BATCH_ID_RE.fullmatch(o["id"])]
    with transaction.atomic():
        return _store(account, objects, now)


def _store(account: str, objects: list[dict[str, Any]], now: dt.datetime) -> PageResult:
    ids = [o["id"] for o in objects]
    existing = {
        b.batch_id: b for b in Batch.objects.select_for_update().filter(account=account, batch_id__in=ids)
    }
    created: list[Batch] = []
    # Per changed row, only the columns that changed: a progressing batch moves its counts, usage
    # and raw object, and one narrow UPDATE each is far cheaper than bulk_update's CASE over all.
    changed: list[tuple[Batch, dict[str, Any]]] = []
    unchanged: list[int] = []
    transitions: list[tuple[Batch, str]] = []
    # Progress samples: only when the counts move, while active, plus the final counts.
    to_sample: list[Batch] = []
    for obj in objects:
        fields = batch_fields(obj, now)
        batch = existing.get(obj["id"])
        if batch is None:
            created.append(
                Batch(
                    account=account,
                    batch_id=obj["id"],
                    first_seen_at=now,
                    synced_at=now,
                    progressed_at=now,
                    status_changed_at=now,
                    **fields,
                )
            )
            if created[-1].status in ACTIVE_STATUSES:
                to_sample.append(created[-1])
            continue
        if batch.raw == obj or (batch.is_terminal and fields["status"] not in TERMINAL_STATUSES):
            # Unchanged, or a snapshot older than the stored one: a batch never leaves a final status.
            unchanged.append(batch.pk)
            continue
        old_status, old_done = batch.status, (batch.request_completed, batch.request_failed)
        updates = {name: value for name, value in fields.items() if getattr(batch, name) != value}
        updates["synced_at"] = now
        for name, value in updates.items():
            setattr(batch, name, value)
        if (batch.request_completed, batch.request_failed) != old_done or batch.status != old_status:
            updates["progressed_at"] = batch.progressed_at = now
            if old_status in ACTIVE_STATUSES:
                to_sample.append(batch)
        if batch.status != old_status:
            updates["status_changed_at"] = batch.status_changed_at = now
            transitions.append((batch, old_status))
            if batch.status in TERMINAL_STATUSES:
                # The batch ended: the claim has done its job. It stays through `cancelling`, so
                # that a sync racing the cancel view knows the cancel is the dashboard's own.
                updates["cancel_requested_by"] = batch.cancel_requested_by = ""
                updates["cancel_requested_at"] = batch.cancel_requested_at = None
        changed.append((batch, updates))
    Batch.objects.bulk_create(created)
    for batch, updates in changed:
        Batch.objects.filter(pk=batch.pk).update(**updates)
    if unchanged:
        Batch.objects.filter(pk__in=unchanged).update(synced_at=now)
    if created or changed:
        bump_mirror_version(account)
    _sample(to_sample, now)
    for batch, old_status in transitions:
        transaction.on_commit(partial(batch_status_changed.send, Batch, batch=batch, old_status=old_status))
    return PageResult(new=len(created))


def _sample(batches: list[Batch], now: dt.datetime) -> None:
    BatchSample.objects.bulk_create(
        BatchSample(
            batch=b,
            at=now,
            completed=b.request_completed or 0,
            failed=b.request_failed or 0,
            total=b.request_total or 0,
        )
        for b in batches
        if b.request_total is not None
    )


def bump_mirror_version(account: str) -> None:
    """The mirror changed: the list's cached results (keyed on this version) are out of date."""
    SyncState.objects.filter(account=account).update(mirror_version=F("mirror_version") + 1)


# --- One cycle -----------------------------------------------------------------------------


@dataclass
class CycleResult:
    account: str
    requests: int = 0
    list_pages: int = 0
    retrieved: int = 0
    new: int = 0
    interrupted: bool = False
    error: UpstreamError | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.interrupted


class Interrupted(Exception):
    """The worker was asked to stop between two requests; everything stored so far stays."""


class _Cycle:
    def __init__(
        self,
        account: Account,
        client: UpstreamClient,
        state: SyncState,
        should_stop: Callable[[], bool],
        owner: str = "",
    ) -> None:
        self.owner = owner
        self.account = account
        self.client = client
        self.state = state
        self.should_stop = should_stop
        self.size = settings.SYNC_PAGE_SIZE
        self.seen: set[str] = set()
        self.result = CycleResult(account=account.name)

    def fetch(
        self, after: str | None, then: Callable[[list[dict[str, Any]], bool, int], None] | None = None
    ) -> tuple[list[dict[str, Any]], bool, int]:
        """One list page, stored (and `then` run in the same transaction).

        Returns the page's batches, has_more, and how many were new.
        """
        self.before_request()
        page = self.client.list_batches(after=after, limit=self.size)
        self.result.list_pages += 1
        if not page.data and page.has_more:
            self.result.warnings.append(
                "The upstream sent an empty list page that claims more batches: the listing was cut short."
            )
        with transaction.atomic():
            stored = store_batches(self.account.name, page.data)
            if then is not None:
                then(page.data, page.has_more, stored.new)
        self.result.new += stored.new
        self.seen.update(o["id"] for o in page.data)
        return page.data, page.has_more, stored.new

    def before_request(self) -> None:
        if self.should_stop():
            raise Interrupted
        if self.owner:
            # Renew the lease: it runs out only when its holder has died.
            SyncState.objects.filter(account=self.account.name, running_owner=self.owner).update(
                running_since=timezone.now()
            )
        # Counted before the request: a failed request costs the upstream all the same.
        self.result.requests += 1

    def top_pass(self) -> None:
        """Newest first, until the pages reach batches the mirror already has."""
        after: str | None = None
        while True:
            data, has_more, new = self.fetch(after)
            if not data or not has_more:
                return
            after = data[-1]["id"]
            if new == len(data) or self.known_active_after(after) >= 2:
                continue
            return

    def import_pass(self, after: str | None, max_pages: int | None) -> None:
        """The first import, newest to oldest, resumable from the cursor saved after each page."""
        state = self.state

        def save_cursor(data: list[dict[str, Any]], has_more: bool, new: int) -> None:
            # In the page's own transaction: a crash cannot keep the page and lose its cursor.
            if data:
                state.import_after = data[-1]["id"]
                state.imported += new
            if not has_more:
                state.import_complete, state.import_after = True, ""
            state.save(update_fields=["import_after", "imported", "import_complete"])

        pages = 0
        while True:
            data, has_more, _ = self.fetch(after, then=save_cursor)
            pages += 1
            # An empty page that claims more has no cursor to follow: the next cycle resumes.
            if not has_more or not data or (max_pages is not None and pages >= max_pages):
                return
            after = data[-1]["id"]

    def known_active_after(self, batch_id: str) -> int:
        """How many known non-terminal batches the next list page would hold, by mirror order."""
        last = Batch.objects.filter(account=self.account.name, batch_id=batch_id).only("created_at").first()
        if last is None:
            return 0
        following = (
            Batch.objects.filter(account=self.account.name)
            .filter(Q(created_at__lt=last.created_at) | Q(created_at=last.created_at, batch_id__lt=batch_id))
            .order_by("-created_at", "-batch_id")
            .values_list("status", flat=True)[: self.size]
        )
        return sum(1 for status in following if status not in TERMINAL_STATUSES)

    def refresh_unreached(self) -> None:
        active = Batch.objects.filter(account=self.account.name).exclude(status__in=TERMINAL_STATUSES)
        for batch_id in sorted(set(active.values_list("batch_id", flat=True)) - self.seen):
            self.before_request()
            try:
                obj = self.client.retrieve_batch(batch_id)
            except UpstreamError as exc:
                if exc.kind != "not_found":
                    raise
                self.result.warnings.append(f"{batch_id} is no longer found upstream.")
                continue
            self.result.retrieved += 1
            store_batches(self.account.name, [obj])


def run_cycle(
    account: Account,
    *,
    client: UpstreamClient | None = None,
    max_import_pages: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    owner: str = "",
) -> CycleResult:
    """One sync cycle for one account. Upstream failures are recorded and returned, not raised.

    `owner` is the lease holder (see sync_account), renewed before every request.
    """
    if client is None:
        with get_client(account) as own_client:
            return run_cycle(
                account,
                client=own_client,
                max_import_pages=max_import_pages,
                should_stop=should_stop,
                owner=owner,
            )
    state, _ = SyncState.objects.get_or_create(account=account.name)
    cycle = _Cycle(account, client, state, should_stop, owner)
    started = time.monotonic()
    try:
        if not state.import_complete and not state.import_after:
            cycle.import_pass(None, max_import_pages)
        else:
            cycle.top_pass()
            if not state.import_complete:
                cycle.import_pass(state.import_after, max_import_pages)
        cycle.refresh_unreached()
    except Interrupted:
        cycle.result.interrupted = True
    except UpstreamError as exc:
        cycle.result.error = exc
    _record(state, cycle.result, time.monotonic() - started)
    result = cycle.result
    log.info(
        "sync account=%s requests=%d pages=%d retrieved=%d new=%d ok=%s%s",
        account.name,
        result.requests,
        result.list_pages,
        result.retrieved,
        result.new,
        result.ok,
        f" error={result.error.kind}" if result.error else "",
    )
    return result


def backoff_seconds(failures: int, retry_after: float | None) -> float:
    if retry_after:
        return min(max(retry_after, BACKOFF_BASE_SECONDS), 3600.0)
    return min(BACKOFF_BASE_SECONDS * 2 ** max(failures - 1, 0), BACKOFF_CAP_SECONDS)


def _record(state: SyncState, result: CycleResult, seconds: float) -> None:
    now = timezone.now()
    state.last_attempt_at = now
    state.last_cycle_requests = result.requests
    state.last_cycle_seconds = seconds
    state.last_warning = " ".join(dict.fromkeys(result.warnings))
    if result.error is not None:
        state.consecutive_failures += 1
        state.last_error = {**result.error.as_dict(), "title": result.error.title, "text": str(result.error)}
        state.last_error_at = now
        state.next_attempt_at = now + dt.timedelta(
            seconds=backoff_seconds(state.consecutive_failures, result.error.retry_after)
        )
    elif not result.interrupted:
        state.last_success_at = now
        state.consecutive_failures = 0
        state.last_error = None
        state.next_attempt_at = None
    # Not the lease fields: they belong to claim() and release().
    state.save(
        update_fields=[
            "last_attempt_at", "last_cycle_requests", "last_cycle_seconds", "last_warning",
            "consecutive_failures", "last_error", "last_error_at", "next_attempt_at", "last_success_at",
        ]
    )  # fmt: skip


# --- Who runs a cycle: the lease ------------------------------------------------------------


def lease_seconds() -> float:
    """A lease outlives the longest single upstream call (its retries and the waits between them
    included); the holder renews it before each call, so only a holder that died lets it run out.
    A cancel claim is held for as long (cancel.claim_ttl)."""
    longest = longest_call_seconds(
        settings.UPSTREAM_CONNECT_TIMEOUT, settings.UPSTREAM_READ_TIMEOUT, settings.UPSTREAM_MAX_RETRIES
    )
    return longest + 60


def _dead_here(owner: str) -> bool:
    """The lease belongs to a process on this host that no longer exists (killed mid-cycle)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _owner() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}"


def claim(account_name: str, owner: str, *, only_if_stale: bool) -> bool:
    """Take the account's refresh lease with one conditional UPDATE; True for the one winner."""
    state, _ = SyncState.objects.get_or_create(account=account_name)
    now = timezone.now()
    free = Q(running_since__isnull=True) | Q(running_since__lt=now - dt.timedelta(seconds=lease_seconds()))
    if state.running_owner and _dead_here(state.running_owner):
        free |= Q(running_owner=state.running_owner)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    rows = SyncState.objects.filter(free, due, account=account_name)
    if only_if_stale:
        max_age = dt.timedelta(seconds=settings.REFRESH_INTERVAL)
        rows = rows.filter(Q(last_attempt_at__isnull=True) | Q(last_attempt_at__lt=now - max_age))
    return rows.update(running_since=now, running_owner=owner) == 1


def release(account_name: str, owner: str) -> None:
    SyncState.objects.filter(account=account_name, running_owner=owner).update(
        running_since=None, running_owner=""
    )


def sync_account(
    account: Account,
    *,
    only_if_stale: bool = False,
    max_import_pages: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CycleResult | None:
    """Run one cycle if this process wins the lease; None when someone else has it (or it is not due)."""
    owner = _owner()
    if not claim(account.name, owner, only_if_stale=only_if_stale):
        return None
    try:
        return run_cycle(account, max_import_pages=max_import_pages, should_stop=should_stop, owner=owner)
    finally:
        release(account.name, owner)


def refresh_stale_in_background(
    accounts: Iterable[Account] | None = None, states: Mapping[str, SyncState] | None = None
) -> list[threading.Thread]:
    """Called by page views: start a refresh for each stale account, without waiting for it.

    `states`: the accounts' SyncState rows when the view has read them already (an account
    without one is stale); without it, each account's row is read here.
    """
    if not settings.SYNC_ON_DEMAND:
        return []
    threads = []
    for account in accounts if accounts is not None else get_accounts().values():
        if _is_fresh(account.name, states):
            continue
        thread = threading.Thread(
            target=_background_cycle, args=(account,), daemon=True, name=f"sync-{account.name}"
        )
        thread.start()
        threads.append(thread)
    return threads


# Account name -> time.monotonic() until which its last read SyncState row says no refresh may
# start: the mirror is fresh, or the sync is backing off after a failure. last_attempt_at and a
# set next_attempt_at only move forward, so until then a read could only say so again: the polls
# of every open page skip the query. Per process, and a pure shortcut.
_fresh_until: dict[str, float] = {}


def _is_fresh(account_name: str, states: Mapping[str, SyncState] | None = None) -> bool:
    """Whether a refresh need not start now: a cheap read first, so most page views write nothing."""
    if states is None:
        if time.monotonic() < _fresh_until.get(account_name, 0.0):
            return True
        fields = ("last_attempt_at", "running_since", "next_attempt_at")
        state = SyncState.objects.filter(account=account_name).only(*fields).first()
    else:
        state = states.get(account_name)
    if state is None or state.last_attempt_at is None:
        return False
    now = timezone.now()
    fresh_until = state.last_attempt_at + dt.timedelta(seconds=settings.REFRESH_INTERVAL)
    if state.next_attempt_at is not None:  # backing off: claim() would refuse a cycle before then
        fresh_until = max(fresh_until, state.next_attempt_at)
    if fresh_until > now:
        _fresh_until[account_name] = time.monotonic() + (fresh_until - now).total_seconds()
        return True
    # Not memoized: the cycle running now may die, and then its lease runs out.
    lease = dt.timedelta(seconds=lease_seconds())
    return state.running_since is not None and now - state.running_since < lease


def _background_cycle(account: Account) -> None:
    try:
        close_old_connections()
        # Short on-demand cycles: a long first import is the worker's job, a page at a time here.
        sync_account(account, only_if_stale=True, max_import_pages=20)
    except Exception:
        log.exception("background sync of account=%s failed", account.name)
    finally:
        connection.close()


def refresh_one(account: Account, batch_id: str) -> None:
    """Retrieve one batch now (after a cancel or a refusal) and store it. Raises UpstreamError."""
    with get_client(account) as client:
        obj = client.retrieve_batch(batch_id)
    store_batches(account.name, [obj])


# --- A batch someone is watching end ----------------------------------------------------------

CANCELLING_WAIT_SECONDS = 0.5


def refresh_cancelling(account: Account, batch: Batch) -> bool:
    """Retrieve a `cancelling` batch at most once per poll interval, whoever is watching it.

    A cancel takes effect upstream minutes later, and the operator who pressed the button watches
    the row for it: waiting for the next account-wide refresh (REFRESH_INTERVAL) would show it late.
    This costs one request per cancelling batch per POLL_INTERVAL, however many people watch: the
    claim is an atomic cache.add in the shared cache (Redis); with the default local-memory cache
    each worker process claims for itself, so it is one request per worker. The poll that
    claims it waits a moment for the answer, so the change shows in this very response; a slow
    upstream only delays it to the next poll. True when the batch was refreshed in time.
    """
    if not settings.SYNC_ON_DEMAND or batch.status != "cancelling":
        return False
    if not cache.add(f"batches:refresh:{batch.pk}", 1, timeout=settings.POLL_INTERVAL):
        return False
    thread = threading.Thread(
        target=_background_refresh_one,
        args=(account, batch.batch_id),
        daemon=True,
        name=f"refresh-{batch.pk}",
    )
    thread.start()
    thread.join(CANCELLING_WAIT_SECONDS)
    return not thread.is_alive()


def _background_refresh_one(account: Account, batch_id: str) -> None:
    try:
        refresh_one(account, batch_id)
    except UpstreamError as exc:
        # The account-wide sync records failures for the banner; this one only tried to be early.
        log.info(
            "refresh of cancelling batch account=%s batch=%s failed: %s", account.name, batch_id, exc.kind
        )
    except Exception:
        log.exception("refresh of cancelling batch account=%s batch=%s failed", account.name, batch_id)
    finally:
        connection.close()
