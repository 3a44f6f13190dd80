"""Template helpers for the cancel controls and a batch's audit trail."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings

from batches.audit import attach_reached
from batches.cancel import claim_is_active
from batches.models import AuditEntry, Batch

register = template.Library()

# A batch's trail is short (a cancel storm writes one entry per click): a cap keeps the page sane.
TRAIL_LIMIT = 100


@register.inclusion_tag("batches/_audit_trail_table.html")
def audit_trail(batch: Batch) -> dict[str, Any]:
    """The batch's audit entries, newest first; two queries whatever their number."""
    trail = AuditEntry.objects.filter(account=batch.account, batch_id=batch.batch_id)
    entries = list(trail.order_by("-seq")[: TRAIL_LIMIT + 1])  # one more tells whether any are left out
    limited = len(entries) > TRAIL_LIMIT
    return {"batch": batch, "entries": attach_reached(entries[:TRAIL_LIMIT]), "limited": limited}


@register.filter
def cancel_claimed(batch: Batch) -> bool:
    """A dashboard cancel is in flight for this batch (a claim older than its TTL is abandoned)."""
    return claim_is_active(batch)


@register.simple_tag
def cancel_reason_limit() -> int:
    return settings.CANCEL_REASON_MAX_LENGTH
