"""Cancelling a batch as a team: at most one upstream cancel per batch, and every attempt on record.

The batch row is the lock: one conditional UPDATE claims it (`cancel_requested_by/at`), and only
the request that claimed it talks to the upstream. Everyone else learns who got there first, and
their attempt is recorded as IN_FLIGHT. A refusal or a failure releases the claim, so another
operator may try again once the cause is understood.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.dispatch import Signal
from django.utils import formats, timezone

from batches import audit, sync
from batches.accounts import Account
from batches.client import UpstreamError
from batches.models import CANCELLABLE_STATUSES, AuditEntry, Batch

log = logging.getLogger("batches.cancel")

Event = AuditEntry.Event
Outcome = AuditEntry.Outcome

# Sent after commit when the upstream accepted a dashboard cancel: (entry=AuditEntry, batch=Batch).
cancel_requested = Signal()


@dataclass
class CancelOutcome:
    entry: AuditEntry | None
    batch: Batch
    error: UpstreamError | None = None
    notice: str = ""

    @property
    def accepted(self) -> bool:
        return self.entry is not None and self.entry.outcome == Outcome.ACCEPTED


def claim_ttl() -> dt.timedelta:
    """How long a claim can be in flight: as long as a sync lease, the longest upstream call.

    A claim older than that belongs to a process that died mid-request; it may be taken over.
    """
    return dt.timedelta(seconds=sync.lease_seconds())


def claim_is_active(batch: Batch, now: dt.datetime | None = None) -> bool:
    at = batch.cancel_requested_at
    return at is not None and (now or timezone.now()) - at < claim_ttl()


def format_time(at: dt.datetime) -> str:
    return formats.time_format(timezone.localtime(at), "H:i")


def requested_notice(by: str, at: dt.datetime) -> str:
    return f"Cancel requested by {by or 'someone'} at {format_time(at)}"


def unclaimed(now: dt.datetime | None = None) -> Q:
    """No one's cancel is in flight (a claim older than its TTL was abandoned)."""
    now = now or timezone.now()
    return Q(cancel_requested_at__isnull=True) | Q(cancel_requested_at__lt=now - claim_ttl())


def _claim(batch: Batch, username: str, now: dt.datetime) -> bool:
    free = Batch.objects.filter(unclaimed(now), pk=batch.pk, status__in=CANCELLABLE_STATUSES)
    return _write_claim(free, batch.account, username, now)


def _release(batch: Batch, username: str, now: dt.datetime) -> None:
    # Only our own claim: if it expired and someone else took it over, theirs stays.
    ours = Batch.objects.filter(pk=batch.pk, cancel_requested_by=username, cancel_requested_at=now)
    _write_claim(ours, batch.account, "", None)


def _write_claim(row: QuerySet[Batch], account: str, by: str, at: dt.datetime | None) -> bool:
    """Set or clear the claim on `row` (one batch at most); True when it was written.

    The list's cached results show claims ("cancel requested by …"): a written claim is a change
    of the mirror, so the account's mirror version moves as for an upstream change."""
    written = row.update(cancel_requested_by=by, cancel_requested_at=at) == 1
    if written:
        sync.bump_mirror_version(account)
    return written


def request_cancel(
    *,
    user: Any,
    account: Account,
    batch: Batch,
    reason: str,
    client_ip: str,
    user_agent: str,
) -> CancelOutcome:
    """Cancel `batch` upstream on behalf of `user`, unless someone already did; audit either way."""
    username = user.get_username()
    now = timezone.now()
    status_before = batch.status
    who = {"actor": user, "reason": reason, "client_ip": client_ip, "user_agent": user_agent}
    where = {"account": account.name, "batch_id": batch.batch_id}

    if not _claim(batch, username, now):
        return _lost(batch, who, where)

    try:
        with sync.get_client(account) as client:
            obj = client.cancel_batch(batch.batch_id)
    except UpstreamError as exc:
        return _refused(batch, exc, account, username, now, who, where, status_before)
    except BaseException:
        # Not an answer from the upstream (a bug, a shutdown): free the batch, then let it surface.
        _release(batch, username, now)
        raise

    # The stored status and the ACCEPTED entry commit together: a concurrent request that finds
    # the claim gone (store_batches clears it once the batch is terminal) finds this entry.
    with transaction.atomic():
        sync.store_batches(account.name, [obj])
        entry = audit.append(
            event=Event.CANCEL,
            outcome=Outcome.ACCEPTED,
            status_before=status_before,
            status_after=obj.get("status") if isinstance(obj.get("status"), str) else "",
            **who,
            **where,
        )
    batch.refresh_from_db()
    transaction.on_commit(lambda: cancel_requested.send(Batch, entry=entry, batch=batch))
    log.info("cancel account=%s batch=%s by=%s accepted", account.name, batch.batch_id, username)
    return CancelOutcome(entry=entry, batch=batch)


def _lost(batch: Batch, who: dict[str, Any], where: dict[str, Any]) -> CancelOutcome:
    """Someone else holds the claim, or the batch is past cancelling: nothing goes upstream."""
    batch.refresh_from_db()
    by, at = batch.cancel_requested_by, batch.cancel_requested_at
    if at is None and batch.status == "cancelling":
        # The winner's cancel already went through (and the claim is gone): name them from the trail.
        accepted = (
            AuditEntry.objects.filter(event=Event.CANCEL, outcome=Outcome.ACCEPTED, **where)
            .order_by("-seq")
            .first()
        )
        if accepted is not None:
            by, at = accepted.actor_username, accepted.at
    if at is None:
        return CancelOutcome(entry=None, batch=batch, notice=f"This batch is already {batch.status}.")
    entry = audit.append(
        event=Event.CANCEL,
        outcome=Outcome.IN_FLIGHT,
        status_before=batch.status,
        **who,
        **where,
    )
    return CancelOutcome(entry=entry, batch=batch, notice=requested_notice(by, at))


def _refused(
    batch: Batch,
    exc: UpstreamError,
    account: Account,
    username: str,
    now: dt.datetime,
    who: dict[str, Any],
    where: dict[str, Any],
    status_before: str,
) -> CancelOutcome:
    _release(batch, username, now)
    # A 409 usually means the mirror was behind (the batch completed): fetch the truth, so the page
    # and the entry show it. A failure here changes nothing about the refusal being reported.
    refreshed = False
    try:
        sync.refresh_one(account, batch.batch_id)
        refreshed = True
    except UpstreamError as again:
        log.info("refresh after refused cancel of %s failed: %s", batch.batch_id, again)
    except Exception:
        log.exception("refresh after refused cancel of %s failed", batch.batch_id)
    batch.refresh_from_db()
    # An HTTP answer is a refusal; no answer (timeout, connection, unreadable body) leaves the
    # outcome unknown: the upstream may have applied the cancel.
    answered = exc.status is not None and exc.kind != "malformed"
    entry = audit.append(
        event=Event.CANCEL,
        outcome=Outcome.REFUSED if answered else Outcome.ERROR,
        status_before=status_before,
        status_after=batch.status if refreshed else "",
        http_status=exc.status,
        error_type=exc.error_type or exc.kind,
        error_code=exc.code,
        error_message=exc.message,
        request_id=exc.request_id,
        **who,
        **where,
    )
    log.info(
        "cancel account=%s batch=%s by=%s failed kind=%s status=%s request_id=%s",
        account.name, batch.batch_id, username, exc.kind, exc.status, exc.request_id or "-",
    )  # fmt: skip
    return CancelOutcome(entry=entry, batch=batch, error=exc)
