"""What the audit learns from the mirror: cancels done elsewhere, and where dashboard cancels ended.

The upstream never says who cancelled a batch, so the mirror's status changes are all we have:
- a batch turning `cancelling`/`cancelled` with no accepted (or in-flight) dashboard cancel was
  cancelled outside the dashboard: one OUTSIDE entry per batch;
- a batch reaching a terminal status after an accepted dashboard cancel gets one REACHED entry,
  so the trail says when the cancel took effect (or that the batch completed first).
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from batches import audit
from batches.models import TERMINAL_STATUSES, AuditEntry, Batch

log = logging.getLogger("batches.audit")

Event = AuditEntry.Event
Outcome = AuditEntry.Outcome
CANCELLED_STATUSES = ("cancelling", "cancelled")


def on_batch_status_changed(sender: Any, *, batch: Batch, old_status: str, **kwargs: Any) -> None:
    """Receiver for sync.batch_status_changed (sent after the mirror's commit)."""
    try:
        record_status_change(batch, old_status)
    except Exception:
        # The audit must never break the sync that sent the signal; the cause goes to the log.
        log.exception("audit of %s/%s turning %s failed", batch.account, batch.batch_id, batch.status)


def record_status_change(batch: Batch, old_status: str) -> AuditEntry | None:
    status = batch.status
    if status not in CANCELLED_STATUSES and status not in TERMINAL_STATUSES:
        return None
    trail = AuditEntry.objects.filter(account=batch.account, batch_id=batch.batch_id)
    dashboard_cancels = trail.filter(event=Event.CANCEL, outcome__in=[Outcome.ACCEPTED, Outcome.IN_FLIGHT])
    now = timezone.now()
    common = {
        "account": batch.account,
        "batch_id": batch.batch_id,
        "status_before": old_status,
        "status_after": status,
        "observed_at": now,
        "at": now,
    }
    # Both checks run under the chain's lock (append_unless), so two syncs seeing the same change
    # in two processes still write one entry.
    if status in CANCELLED_STATUSES:
        entry = audit.append_unless(
            lambda: (
                batch.cancel_requested_at is not None  # a dashboard cancel is in flight
                or dashboard_cancels.exists()
                or trail.filter(event=Event.OUTSIDE).exists()
            ),
            event=Event.OUTSIDE,
            outcome=Outcome.OBSERVED,
            reason=_outside_reason(trail),
            **common,
        )
        if entry is not None:
            return entry
    if status in TERMINAL_STATUSES:
        return audit.append_unless(
            lambda: (
                not trail.filter(event=Event.CANCEL, outcome=Outcome.ACCEPTED).exists()
                or trail.filter(event=Event.REACHED).exists()
            ),
            event=Event.REACHED,
            outcome=Outcome.OBSERVED,
            **common,
        )
    return None


def _outside_reason(trail: Any) -> str:
    # A cancel that timed out may have reached the upstream after all: say so rather than guess.
    unsure = trail.filter(event=Event.CANCEL, outcome=Outcome.ERROR).order_by("-seq").first()
    if unsure is not None:
        return (
            "cancelled outside the dashboard, or by the dashboard cancel "
            f"#{unsure.seq} whose answer never arrived"
        )
    return "cancelled outside the dashboard"
