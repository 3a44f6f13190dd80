"""The tamper-evident audit trail: a hash chain over append-only entries.

Every entry stores the hash of the entry before it (`prev_hash`) and its own
`entry_hash = sha256(prev_hash + canonical_json(content))`. Editing an entry breaks its own hash;
deleting or reordering entries breaks the link to the previous one; deleting the newest entries
makes the chain disagree with `AuditHead`, the single row every append locks and moves forward.

The chain proves the table was not edited behind the application's back. It cannot prove that
nobody rewrote the whole chain and the head together: for that, export the head hash elsewhere
(`manage.py verify_audit` prints it) and compare later.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from batches.models import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64
HEAD_PK = 1
USER_AGENT_MAX = 400
CLIENT_IP_MAX = 64

# What the hash covers, spelled out rather than read from the model: a field added later must not
# silently change the hash of every entry written before it (tests check that this list and the
# model agree, so a new field is a decision, not an accident).
# The actor's foreign key is left out on purpose: it is SET_NULL when a user is deleted, which would
# make that deletion look like tampering. Who acted is covered by actor_username and actor_email.
HASHED_FIELDS = (
    "at",
    "event",
    "outcome",
    "actor_username",
    "actor_email",
    "account",
    "batch_id",
    "status_before",
    "status_after",
    "reason",
    "client_ip",
    "user_agent",
    "http_status",
    "error_type",
    "error_code",
    "error_message",
    "request_id",
    "observed_at",
    "prev_hash",
)
UNHASHED_FIELDS = ("seq", "entry_hash", "actor")

BROKEN_CONTENT = "content edited"
BROKEN_LINK = "a previous entry is missing or reordered"
BROKEN_HEAD = "head does not match"


# --- Hashing -----------------------------------------------------------------------------------


def _canonical_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        # One spelling per instant, whatever time zone the value came back from the database in.
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return value


def canonical_json(values: Mapping[str, Any]) -> str:
    """The hashed content of an entry given its field values (by field name)."""
    content = {name: _canonical_value(values.get(name)) for name in HASHED_FIELDS}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_hash(prev_hash: str, values: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(values)).encode()).hexdigest()


def _values_of(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in HASHED_FIELDS}


# --- Appending ---------------------------------------------------------------------------------


def _locked_head() -> AuditHead:
    """The head row, locked until the surrounding transaction ends (created on first use).

    select_for_update() holds the row lock on PostgreSQL; on SQLite it is a no-op, but the settings
    open every transaction with BEGIN IMMEDIATE, which already serializes writers.
    """
    head = AuditHead.objects.select_for_update().filter(pk=HEAD_PK).first()
    if head is None:
        # ON CONFLICT DO NOTHING: two first appends racing both end up locking the same row.
        AuditHead.objects.bulk_create([AuditHead(pk=HEAD_PK)], ignore_conflicts=True)
        head = AuditHead.objects.select_for_update().get(pk=HEAD_PK)
    return head


def _fill(fields: dict[str, Any]) -> dict[str, Any]:
    actor = fields.get("actor")
    if actor is not None:
        # The user row may be deleted one day; the name and address stay as text.
        fields.setdefault("actor_username", actor.get_username())
        fields.setdefault("actor_email", getattr(actor, "email", "") or "")
    fields.setdefault("at", timezone.now())
    for name in ("reason", "error_message"):
        if fields.get(name) is None:
            fields[name] = ""
    for name, limit in (("user_agent", USER_AGENT_MAX), ("client_ip", CLIENT_IP_MAX)):
        fields[name] = (fields.get(name) or "")[:limit]
    # Optional upstream fields arrive as None; the text columns store "" for "absent".
    for name in ("error_type", "error_code", "request_id", "status_before", "status_after"):
        value = fields.get(name)
        fields[name] = "" if value is None else str(value)
    return fields


def _append_locked(head: AuditHead, fields: dict[str, Any]) -> AuditEntry:
    entry = AuditEntry(**_fill(fields), prev_hash=head.last_hash)
    entry.entry_hash = compute_hash(entry.prev_hash, _values_of(entry))
    entry.save(force_insert=True)
    # The head moves with a plain UPDATE of its own row: AuditHead is not append-only.
    AuditHead.objects.filter(pk=head.pk).update(last_hash=entry.entry_hash, count=head.count + 1)
    head.last_hash, head.count = entry.entry_hash, head.count + 1
    return entry


def append(**fields: Any) -> AuditEntry:
    """Write one entry as the new end of the chain. Fields are AuditEntry's, minus the hashes."""
    with transaction.atomic():
        return _append_locked(_locked_head(), fields)


def append_unless(exists: Callable[[], bool], **fields: Any) -> AuditEntry | None:
    """Append only if `exists()` is false, checked while holding the chain's lock.

    For "once per batch" entries: two processes seeing the same status change cannot both pass
    the check, because the second one waits for the first one's commit before checking.
    """
    with transaction.atomic():
        head = _locked_head()
        if exists():
            return None
        return _append_locked(head, fields)


# --- Request details ---------------------------------------------------------------------------


def user_agent(request: HttpRequest) -> str:
    return (request.META.get("HTTP_USER_AGENT") or "")[:USER_AGENT_MAX]


# --- Reading ---------------------------------------------------------------------------------


def attach_reached(entries: list[AuditEntry]) -> list[AuditEntry]:
    """Give each accepted dashboard cancel its REACHED entry as `.reached` (one query for all)."""
    accepted = {
        e.seq
        for e in entries
        if e.event == AuditEntry.Event.CANCEL and e.outcome == AuditEntry.Outcome.ACCEPTED
    }
    reached: dict[tuple[str, str], AuditEntry] = {}
    if accepted:
        batch_ids = {e.batch_id for e in entries if e.seq in accepted}
        rows = AuditEntry.objects.filter(event=AuditEntry.Event.REACHED, batch_id__in=batch_ids)
        for row in rows.order_by("seq"):
            reached.setdefault((row.account, row.batch_id), row)
    for entry in entries:
        found = reached.get((entry.account, entry.batch_id)) if entry.seq in accepted else None
        entry.reached = found  # type: ignore[attr-defined]
    return entries


# --- Verifying ---------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    reason: str = ""
    head_hash: str = GENESIS_HASH

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain OK: {self.checked} entries"
        where = f"entry #{self.broken_seq}" if self.broken_seq is not None else "the head"
        return f"audit chain BROKEN at {where}: {self.reason} ({self.checked} entries verified before it)"


def _rows() -> Iterable[dict[str, Any]]:
    fields = ("seq", "entry_hash", *HASHED_FIELDS)
    return AuditEntry.objects.order_by("seq").values(*fields).iterator(chunk_size=2000)


def verify_chain() -> VerifyResult:
    """Walk the chain by seq; report the first entry that does not fit, and why.

    The head stays locked during the walk so that no append lands between reading the head and
    reading the entries (appends wait for a moment; the walk is one streamed query).
    """
    with transaction.atomic():
        head = AuditHead.objects.select_for_update().filter(pk=HEAD_PK).first()
        head_hash, head_count = (head.last_hash, head.count) if head else (GENESIS_HASH, 0)
        expected_prev = GENESIS_HASH
        checked = 0
        last_seq: int | None = None
        for row in _rows():
            if compute_hash(row["prev_hash"], row) != row["entry_hash"]:
                return VerifyResult(False, checked, row["seq"], BROKEN_CONTENT, head_hash)
            if row["prev_hash"] != expected_prev:
                return VerifyResult(False, checked, row["seq"], BROKEN_LINK, head_hash)
            expected_prev = row["entry_hash"]
            checked += 1
            last_seq = row["seq"]
    if expected_prev != head_hash or checked != head_count:
        # The newest entries were removed (or the head edited): no later entry is there to notice.
        return VerifyResult(False, checked, last_seq, BROKEN_HEAD, head_hash)
    return VerifyResult(True, checked, head_hash=head_hash)
