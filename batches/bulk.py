"""Bulk cancel: many batches, each through `request_cancel` (its own claim, its own audit entry).

A job runs the cancels one after the other, with a short pause between them, and waits out a 429
(per its Retry-After, bounded) before trying that batch again. A failure on one batch never stops
the others. Progress lives in the Django cache under `bulk:<job id>` rather than in a model: it is
only needed while someone watches it. The locmem cache is per process, so a job started on one
instance is only visible there; deployments with several instances use Redis (CACHE_URL), which
every instance shares.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.db.models import Q, QuerySet
from django.http import QueryDict
from django.utils import timezone

from batches.accounts import get_account, get_accounts
from batches.cancel import request_cancel, unclaimed
from batches.client import BATCH_ID_RE
from batches.filters import BatchFilters
from batches.models import CANCELLABLE_STATUSES, Batch

log = logging.getLogger("batches.bulk")

MAX_IDS = 500
JOB_ID_RE = r"[0-9a-f]{32}"  # new_job_id(): 16 random bytes in hex; the progress URL matches it
CACHE_SECONDS = 6 * 3600
MAX_429_RETRIES = 3
_sleep = time.sleep  # looked up per job: tests replace it

# Outcome of one batch, as the progress panel shows it.
ACCEPTED = "accepted"
REFUSED = "refused"  # the upstream answered with an error (message and request id kept)
ERROR = "error"  # no answer, or a failure here: whether it went through is unknown
ALREADY = "already"  # someone else's cancel is in flight, or the batch is past cancelling
MISSING = "missing"  # no longer in the mirror

LABELS = {
    ACCEPTED: "Accepted",
    REFUSED: "Refused",
    ERROR: "Unknown",
    ALREADY: "Already requested",
    MISSING: "Not found",
}


def pause_seconds() -> float:
    return float(getattr(settings, "BULK_CANCEL_PAUSE", 0.25))


def max_wait_seconds() -> float:
    return float(getattr(settings, "BULK_CANCEL_MAX_WAIT", 30.0))


def run_inline() -> bool:
    return bool(getattr(settings, "BULK_CANCEL_INLINE", False))


# --- what a bulk cancel targets ------------------------------------------------------------------


def cancellable(queryset: QuerySet[Batch]) -> QuerySet[Batch]:
    """Batches that may be cancelled and that no one's cancel is in flight for."""
    return queryset.filter(unclaimed(), status__in=CANCELLABLE_STATUSES)


def filter_targets(filters: BatchFilters) -> QuerySet[Batch]:
    """Every cancellable batch matching the list's filters and tab, on every page (no cursor)."""
    queryset = filters.in_tab(filters.matching(Batch.objects.all()))
    return cancellable(queryset).order_by("-created_at", "-id")


def filters_from_querystring(querystring: str) -> BatchFilters:
    return BatchFilters.parse(QueryDict(querystring.lstrip("?")), sorted(get_accounts()))


def filter_querystring(filters: BatchFilters) -> str:
    """What the list's button sends back: its filters without the page cursor."""
    return filters.querystring(before=None)


def count_for(filters: BatchFilters) -> int:
    return filter_targets(filters).count()


class InvalidSelection(ValueError):
    pass


def parse_ids(values: Iterable[str]) -> list[tuple[str, str]]:
    """`account/batch_id` pairs, validated and deduplicated in order; every one must be mirrored."""
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for value in values:
        account, sep, batch_id = value.strip().partition("/")
        if not sep or get_account(account) is None or not BATCH_ID_RE.fullmatch(batch_id):
            shown = value if len(value) <= 60 else value[:60] + "…"
            raise InvalidSelection(f"Not a batch of this dashboard: {shown!r}. Nothing was sent.")
        if (account, batch_id) not in seen:
            seen.add((account, batch_id))
            pairs.append((account, batch_id))
        if len(pairs) > MAX_IDS:
            raise InvalidSelection(f"At most {MAX_IDS} batches can be cancelled at once. Nothing was sent.")
    if not pairs:
        raise InvalidSelection("No batch was selected. Nothing was sent.")
    found = _mirrored(pairs)
    missing = [f"{a}/{b}" for a, b in pairs if (a, b) not in found]
    if missing:
        raise InvalidSelection(f"Not in the dashboard: {', '.join(missing[:3])}. Nothing was sent.")
    return pairs


def _mirrored(pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    by_account: dict[str, list[str]] = {}
    for account, batch_id in pairs:
        by_account.setdefault(account, []).append(batch_id)
    condition = Q(pk__in=[])
    for account, ids in by_account.items():
        condition |= Q(account=account, batch_id__in=ids)
    return set(Batch.objects.filter(condition).values_list("account", "batch_id"))


# --- the job ---------------------------------------------------------------------------------------


def cache_key(job_id: str) -> str:
    return f"bulk:{job_id}"


def new_job_id() -> str:
    return secrets.token_hex(16)


def get_job(job_id: str) -> dict[str, Any] | None:
    job = cache.get(cache_key(job_id))
    return job if isinstance(job, dict) else None


def _save(job: dict[str, Any]) -> None:
    cache.set(cache_key(job["id"]), job, CACHE_SECONDS)


@dataclass
class Who:
    """What request_cancel records about the person behind the whole job."""

    user: Any
    reason: str
    client_ip: str
    user_agent: str


def create_job(targets: list[tuple[str, str]], who: Who) -> dict[str, Any]:
    job = {
        "id": new_job_id(),
        "user_id": who.user.pk,
        "total": len(targets),
        "done": 0,
        "finished": False,
        "waiting": 0.0,  # seconds of a Retry-After being waited out right now
        "items": [],
        "started_at": timezone.now().isoformat(),
    }
    _save(job)
    return job


def start(job: dict[str, Any], targets: list[tuple[str, str]], who: Who) -> None:
    """Run the job inline (BULK_CANCEL_INLINE, the tests) or in a daemon thread (production)."""
    if run_inline():
        run(job, targets, who)
        return
    thread = threading.Thread(
        target=_run_in_thread, args=(job, targets, who), name=f"bulk-cancel-{job['id'][:8]}", daemon=True
    )
    thread.start()


def _run_in_thread(job: dict[str, Any], targets: list[tuple[str, str]], who: Who) -> None:
    close_old_connections()
    try:
        run(job, targets, who)
    except Exception:
        log.exception("bulk cancel %s stopped", job["id"])
        job["finished"] = True
        job["waiting"] = 0.0
        _save(job)
    finally:
        connection.close()


def run(
    job: dict[str, Any],
    targets: list[tuple[str, str]],
    who: Who,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    sleep = sleep or _sleep
    for index, (account, batch_id) in enumerate(targets):
        if index:
            sleep(pause_seconds())
        job["items"].append(_cancel_one(job, account, batch_id, who, sleep))
        job["done"] = len(job["items"])
        _save(job)
    job["finished"] = True
    job["waiting"] = 0.0
    _save(job)
    log.info(
        "bulk cancel %s by %s: %s",
        job["id"], who.user.get_username(),
        ", ".join(f"{k}={sum(1 for i in job['items'] if i['outcome'] == k)}" for k in LABELS),
    )  # fmt: skip
    return job


def _cancel_one(
    job: dict[str, Any], account_name: str, batch_id: str, who: Who, sleep: Callable[[float], None]
) -> dict[str, Any]:
    item: dict[str, Any] = {"account": account_name, "batch_id": batch_id, "waited": 0.0}
    account = get_account(account_name)
    attempts = 0
    while True:
        batch = Batch.objects.filter(account=account_name, batch_id=batch_id).first()
        if account is None or batch is None:
            return {**item, "outcome": MISSING, "message": "This batch is no longer in the dashboard."}
        try:
            outcome = request_cancel(
                user=who.user,
                account=account,
                batch=batch,
                reason=who.reason,
                client_ip=who.client_ip,
                user_agent=who.user_agent,
            )
        except Exception:
            log.exception("bulk cancel %s: %s/%s failed", job["id"], account_name, batch_id)
            return {**item, "outcome": ERROR, "message": "The dashboard failed on this batch: see its log."}
        error = outcome.error
        if error is not None and error.status == 429 and attempts < MAX_429_RETRIES:
            # Rate limited: every later call would be too. Wait as asked (bounded), then this one again.
            attempts += 1
            wait = min(error.retry_after if error.retry_after is not None else 1.0, max_wait_seconds())
            job["waiting"] = wait
            _save(job)
            sleep(wait)
            item["waited"] += wait
            job["waiting"] = 0.0
            continue
        item["status"] = outcome.batch.status
        if outcome.accepted:
            return {**item, "outcome": ACCEPTED, "message": f"Now {outcome.batch.status}."}
        if error is not None:
            answered = error.status is not None and error.kind != "malformed"
            return {
                **item,
                "outcome": REFUSED if answered else ERROR,
                "title": error.title,
                "http_status": error.status,
                "message": error.message,
                "request_id": error.request_id or "",
            }
        return {**item, "outcome": ALREADY, "message": outcome.notice}
