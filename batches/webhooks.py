"""Outgoing webhooks: tell a chat channel or any HTTP endpoint when a batch ends or is cancelled.

Two halves that never meet in one request:

- Events only queue. The receivers of `sync.batch_status_changed` (a batch reached a terminal
  status) and `cancel.cancel_requested` (the upstream accepted a dashboard cancel) run after the
  commit that changed the mirror, and INSERT one pending WebhookDelivery per matching webhook.
  A page or a sync cycle never waits for a webhook's server.
- A delivery loop sends. `manage.py deliver_webhooks`, and the sync worker after each round, claim
  due deliveries one at a time with a conditional UPDATE (pending and due → sending, with a lease),
  so any number of loops send each delivery once; a loop that dies mid-send leaves a claim that
  another loop takes over when its lease runs out. A failure is retried after 30 s, 2 min,
  10 min, 1 h and 6 h, then the delivery is failed; the admin's "retry now" queues it again.

Bodies: `generic` is the payload as JSON, signed with the webhook's secret (HMAC-SHA256 of the
exact body, header `X-Batch-Dashboard-Signature: sha256=<hex>`); `slack` is a Slack-compatible
`{"text", "blocks"}` message, with upstream text escaped as Slack asks (`&`, `<`, `>`).

Sending: the URL is checked again and its host resolved right before every send, and the
connection goes to the checked address (no second lookup for DNS rebinding to answer), with the
host name kept for the Host header and TLS. Connect timeout 3 s, read timeout 5 s, no redirects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from batches.models import (
    TERMINAL_STATUSES,
    WEBHOOK_EVENT_CANCEL,
    WEBHOOK_EVENT_TERMINAL,
    WEBHOOK_EVENT_TEST,
    AuditEntry,
    Batch,
    Webhook,
    WebhookDelivery,
)
from batches.webhook_url import Target, resolve_webhook_url

log = logging.getLogger("batches.webhooks")

Status = WebhookDelivery.Status

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0
# After the 1st, 2nd, ... failed attempt, the next one comes this much later; then it fails.
BACKOFF_SECONDS = (30, 120, 600, 3600, 6 * 3600)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
# The whole exchange, however slowly the receiver trickles its answer (the timeouts above are per
# socket operation): a send never outlives its claim, nor holds the delivery loop for long.
SEND_SECONDS = 15.0
# A claim longer than any one send (SEND_SECONDS, a few times over): then it is stale.
LEASE_SECONDS = 120
RESPONSE_CHARS = 1000
SIGNATURE_HEADER = "X-Batch-Dashboard-Signature"
USER_AGENT = "batch-dashboard-webhooks/1"


# --- Events: queue one delivery per webhook that wants it ----------------------------------------


def on_batch_status_changed(sender: Any, *, batch: Batch, old_status: str, **kwargs: Any) -> None:
    """Receiver for sync.batch_status_changed (after the mirror's commit): terminal transitions."""
    if batch.status not in TERMINAL_STATUSES or not old_status or old_status in TERMINAL_STATUSES:
        return
    try:
        enqueue(WEBHOOK_EVENT_TERMINAL, batch.account, lambda: terminal_payload(batch, old_status))
    except Exception:
        # Like the audit receiver: a notification must never break the sync that sent the signal.
        log.exception(
            "queueing webhooks for %s/%s turning %s failed", batch.account, batch.batch_id, batch.status
        )


def on_cancel_requested(sender: Any, *, entry: AuditEntry, batch: Batch, **kwargs: Any) -> None:
    """Receiver for cancel.cancel_requested (after the commit of the ACCEPTED audit entry)."""
    try:
        enqueue(WEBHOOK_EVENT_CANCEL, batch.account, lambda: cancel_payload(entry, batch))
    except Exception:
        log.exception("queueing webhooks for the cancel of %s/%s failed", batch.account, batch.batch_id)


def enqueue(event: str, account: str, payload: Callable[[], dict[str, Any]]) -> list[WebhookDelivery]:
    """Insert a pending delivery of `payload()` for every enabled webhook of `account` that wants `event`."""
    webhooks = [
        webhook
        for webhook in Webhook.objects.filter(enabled=True, account__in=[account, "*"])
        if webhook.wants(event)
    ]
    if not webhooks:
        return []
    body = payload()
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(webhook=webhook, event=event, payload=body, next_attempt_at=now, created_at=now)
        for webhook in webhooks
    )
    log.info("queued %d webhook deliveries of %s for account=%s", len(deliveries), event, account)
    return deliveries


def queue_test(webhook: Webhook, actor: str) -> WebhookDelivery:
    """A test delivery (the admin's "send test"); sent even while the webhook is disabled."""
    payload: dict[str, Any] = {
        "event": WEBHOOK_EVENT_TEST,
        "account": webhook.account,
        "batch_id": None,
        "status": None,
        "previous_status": None,
        "request_counts": None,
        "model": None,
        "endpoint": None,
        "description": "A test message from the batch dashboard.",
        "actor": actor,
        "reason": None,
        "at": _iso(timezone.now()),
    }
    if settings.DASHBOARD_URL:
        payload["url"] = settings.DASHBOARD_URL + reverse("batch_list")
    return WebhookDelivery.objects.create(webhook=webhook, event=WEBHOOK_EVENT_TEST, payload=payload)


# --- Payloads -------------------------------------------------------------------------------------


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def batch_url(batch: Batch) -> str:
    """The batch's detail page as an absolute URL, or "" when DASHBOARD_URL is not set."""
    if not settings.DASHBOARD_URL:
        return ""
    return settings.DASHBOARD_URL + reverse("batch_detail", args=[batch.account, batch.batch_id])


def _payload(
    event: str,
    batch: Batch,
    *,
    status: str,
    previous_status: str,
    actor: str | None,
    reason: str | None,
    at: dt.datetime,
) -> dict[str, Any]:
    counts = None
    if batch.request_total is not None:
        counts = {
            "total": batch.request_total,
            "completed": batch.request_completed,
            "failed": batch.request_failed,
        }
    payload: dict[str, Any] = {
        "event": event,
        "account": batch.account,
        "batch_id": batch.batch_id,
        "status": status,
        "previous_status": previous_status,
        "request_counts": counts,
        "model": batch.model or None,
        "endpoint": batch.endpoint or None,
        "description": batch.description or None,
        "actor": actor,
        "reason": reason,
        "at": _iso(at),
    }
    url = batch_url(batch)
    if url:
        payload["url"] = url
    return payload


def terminal_payload(batch: Batch, old_status: str) -> dict[str, Any]:
    actor = reason = None
    if batch.status == "cancelled":
        # Who asked for it, when the dashboard did (the upstream never says who cancelled).
        accepted = (
            AuditEntry.objects.filter(
                account=batch.account,
                batch_id=batch.batch_id,
                event=AuditEntry.Event.CANCEL,
                outcome=AuditEntry.Outcome.ACCEPTED,
            )
            .order_by("-seq")
            .first()
        )
        if accepted is not None:
            actor, reason = accepted.actor_username or None, accepted.reason or None
    return _payload(
        WEBHOOK_EVENT_TERMINAL,
        batch,
        status=batch.status,
        previous_status=old_status,
        actor=actor,
        reason=reason,
        at=batch.terminal_at or timezone.now(),
    )


def cancel_payload(entry: AuditEntry, batch: Batch) -> dict[str, Any]:
    return _payload(
        WEBHOOK_EVENT_CANCEL,
        batch,
        status=entry.status_after or batch.status,
        previous_status=entry.status_before,
        actor=entry.actor_username or None,
        reason=entry.reason or None,
        at=entry.at,
    )


# --- Bodies ---------------------------------------------------------------------------------------


def slack_escape(text: Any) -> str:
    """Slack's escaping of text: `&`, `<` and `>`, so no upstream text becomes a link or a mention."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: Any, limit: int) -> str:
    text = " ".join(str(text).split())  # one line: no newlines from metadata or reasons
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack-compatible message: a concise `text` line (notifications) and the same as blocks."""
    event = payload.get("event")
    account = slack_escape(payload.get("account") or "")
    batch_id = slack_escape(payload.get("batch_id") or "")
    url = payload.get("url") or ""
    # Our own URL (DASHBOARD_URL + a path of validated ids); `|` and `>` would end Slack's link.
    safe_url = url and "|" not in url and ">" not in url and " " not in url
    batch_ref = f"<{slack_escape(url)}|{batch_id}>" if safe_url else f"`{batch_id}`"
    if event == WEBHOOK_EVENT_TEST:
        by = slack_escape(payload.get("actor") or "someone")
        text = f"Test message from the batch dashboard (webhook for {account}, sent by {by})."
        return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
    status = slack_escape(payload.get("status") or "?")
    previous = slack_escape(payload.get("previous_status") or "?")
    actor = slack_escape(_clip(payload.get("actor") or "someone", 150))
    reason = payload.get("reason")
    if event == WEBHOOK_EVENT_CANCEL:
        text = f"{actor} cancelled batch {batch_ref} on {account} (was {previous})"
        if reason:
            text += f": {slack_escape(_clip(reason, 300))}"
    else:
        text = f"Batch {batch_ref} on {account} {status} (was {previous})"
        counts = payload.get("request_counts") or {}
        if counts.get("total") is not None:
            text += (
                f", {counts.get('completed') or 0}/{counts['total']} requests completed,"
                f" {counts.get('failed') or 0} failed"
            )
        if payload.get("actor"):
            text += f"; cancel requested by {actor}"
            if reason:
                text += f": {slack_escape(_clip(reason, 300))}"
    description = payload.get("description")
    if description:
        text += f" — {slack_escape(_clip(description, 200))}"
    details = [
        f"*{name}:* {slack_escape(_clip(payload[key], 200))}"
        for name, key in (("Model", "model"), ("Endpoint", "endpoint"))
        if payload.get(key)
    ]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if details:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": "  ·  ".join(details)}]})
    return {"text": text, "blocks": blocks}


def render(webhook: Webhook, payload: dict[str, Any]) -> bytes:
    message = slack_message(payload) if webhook.kind == Webhook.Kind.SLACK else payload
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers_for(webhook: Webhook, delivery: WebhookDelivery, body: bytes) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "X-Batch-Dashboard-Event": delivery.event,
        # The same for every attempt of one delivery: receivers can drop a repeat.
        "X-Batch-Dashboard-Delivery": str(delivery.pk),
    }
    if webhook.secret:
        headers[SIGNATURE_HEADER] = sign(webhook.secret, body)
    return headers


# --- Sending --------------------------------------------------------------------------------------


@dataclass
class Attempt:
    status_code: int | None = None
    response: str = ""
    error: str = ""
    # Failed for good: no retry (the webhook was disabled).
    final: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300 and not self.error


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi is a dependency
        return ssl.create_default_context()


def _connector(addresses: tuple[str, ...], port: int) -> Callable[..., socket.socket]:
    """http.client's socket factory, to the checked addresses only (never a second DNS lookup)."""

    def create_connection(address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        error: OSError | None = None
        for ip in addresses:
            try:
                sock = socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                error = exc
                continue
            sock.settimeout(READ_TIMEOUT)
            return sock
        raise error or OSError("no address to connect to")

    return create_connection


def post(target: Target, body: bytes, headers: dict[str, str]) -> Attempt:
    """POST `body` to the checked target; the status and the start of the answer, or the error."""
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(
            target.host, target.port, timeout=READ_TIMEOUT, context=_tls_context()
        )
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=READ_TIMEOUT)
    conn._create_connection = _connector(target.addresses, target.port)  # type: ignore[attr-defined]
    gave_up = threading.Event()
    watchdog = threading.Timer(SEND_SECONDS, _give_up, args=(conn, gave_up))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", target.path, body=body, headers={"Host": target.host_header, **headers})
        response = conn.getresponse()
        # read1: what has arrived, not "until this many bytes or the end", which a body without a
        # length on a connection the receiver keeps open would reach only at the read timeout.
        text = response.read1(4 * RESPONSE_CHARS).decode("utf-8", "replace")[:RESPONSE_CHARS]
        if gave_up.is_set():  # the shut-down socket read as the end of a (cut) answer
            return Attempt(error=GAVE_UP)
        attempt = Attempt(status_code=response.status, response=text)
        if 300 <= response.status < 400:
            location = _clip(response.getheader("Location") or "", 200)
            attempt.error = (
                f"HTTP {response.status}: redirects are not followed (Location: {location or '-'})"
            )
        elif not attempt.ok:
            attempt.error = f"HTTP {response.status}"
        return attempt
    except (OSError, http.client.HTTPException) as exc:
        if gave_up.is_set():
            return Attempt(error=GAVE_UP)
        if isinstance(exc, TimeoutError):
            return Attempt(error=f"timed out (connect {CONNECT_TIMEOUT:g} s, read {READ_TIMEOUT:g} s)")
        return Attempt(error=f"{type(exc).__name__}: {exc}"[:RESPONSE_CHARS])
    finally:
        watchdog.cancel()
        conn.close()


GAVE_UP = "gave up: the answer did not arrive within the time a send is allowed"


def _give_up(conn: http.client.HTTPConnection, gave_up: threading.Event) -> None:
    """At the deadline: shutting the socket down wakes the sending thread from a blocked read."""
    gave_up.set()
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def send(delivery: WebhookDelivery) -> Attempt:
    webhook = delivery.webhook
    if not webhook.enabled and delivery.event != WEBHOOK_EVENT_TEST:
        return Attempt(error="the webhook is disabled", final=True)
    try:
        target = resolve_webhook_url(webhook.url)
    except ValidationError as exc:
        return Attempt(error="refused: " + " ".join(exc.messages))
    body = render(webhook, delivery.payload)
    return post(target, body, headers_for(webhook, delivery, body))


# --- The delivery loop: claim, send, record -------------------------------------------------------


def new_owner() -> str:
    return f"{os.uname().nodename}:{os.getpid()}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"[:100]


def _due(now: dt.datetime) -> Q:
    return Q(status=Status.PENDING, next_attempt_at__lte=now) | Q(status=Status.SENDING, locked_until__lt=now)


def claim_next(owner: str, now: dt.datetime | None = None) -> WebhookDelivery | None:
    """Claim the most overdue delivery with one conditional UPDATE; None when nothing is due."""
    now = now or timezone.now()
    while True:
        candidates = list(
            WebhookDelivery.objects.filter(_due(now))
            .order_by("next_attempt_at", "id")
            .values_list("pk", flat=True)[:20]
        )
        if not candidates:
            return None
        for pk in candidates:
            won = WebhookDelivery.objects.filter(_due(now), pk=pk).update(
                status=Status.SENDING, locked_by=owner, locked_until=now + dt.timedelta(seconds=LEASE_SECONDS)
            )
            if won == 1:
                return WebhookDelivery.objects.select_related("webhook").filter(pk=pk).first()
        # Every candidate went to another loop: look again, they are no longer due.


def record(delivery: WebhookDelivery, attempt: Attempt, owner: str) -> str:
    """Store the attempt's outcome under our claim; the delivery's new status ("" if the claim was lost)."""
    now = timezone.now()
    attempts = delivery.attempts + 1
    fields: dict[str, Any] = {
        "attempts": attempts,
        "last_attempt_at": now,
        "last_status_code": attempt.status_code,
        "last_response": attempt.response,
        "last_error": attempt.error,
        "locked_by": "",
        "locked_until": None,
    }
    if attempt.ok:
        fields.update(status=Status.DELIVERED, delivered_at=now)
    elif attempts >= MAX_ATTEMPTS or attempt.final:
        fields.update(status=Status.FAILED)
    else:
        fields.update(
            status=Status.PENDING, next_attempt_at=now + dt.timedelta(seconds=BACKOFF_SECONDS[attempts - 1])
        )
    updated = WebhookDelivery.objects.filter(pk=delivery.pk, status=Status.SENDING, locked_by=owner).update(
        **fields
    )
    if not updated:
        log.warning("webhook delivery #%s: the claim ran out before the answer was recorded", delivery.pk)
        return ""
    return str(fields["status"])


@dataclass
class DeliveryRound:
    delivered: int = 0
    retrying: int = 0
    failed: int = 0

    @property
    def sent(self) -> int:
        return self.delivered + self.retrying + self.failed


def deliver_due(
    *,
    max_seconds: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DeliveryRound:
    """Send due deliveries one by one until none is due, `should_stop()`, or `max_seconds` passed.

    The time bound is checked between two sends: one send may add up to its timeouts beyond it.
    """
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    owner = new_owner()
    result = DeliveryRound()
    while not should_stop() and (deadline is None or time.monotonic() < deadline):
        delivery = claim_next(owner)
        if delivery is None:
            break
        try:
            attempt = send(delivery)
        except Exception as exc:  # a bug must not leave the claim hanging until its lease runs out
            log.exception("webhook delivery #%s failed unexpectedly", delivery.pk)
            attempt = Attempt(error=f"internal error: {type(exc).__name__}")
        status = record(delivery, attempt, owner)
        if status == Status.DELIVERED:
            result.delivered += 1
        elif status == Status.FAILED:
            result.failed += 1
        elif status == Status.PENDING:
            result.retrying += 1
        log.info(
            "webhook delivery #%s %s to webhook #%s (%s): attempt %d %s%s",
            delivery.pk, delivery.event, delivery.webhook_id, delivery.webhook.host, delivery.attempts + 1,
            status or "claim lost", f" ({attempt.error})" if attempt.error else "",
        )  # fmt: skip
    return result


def retry_now(queryset: Any) -> int:
    """The admin's "retry now": failed deliveries start over, pending ones are due at once."""
    now = timezone.now()
    sooner = queryset.filter(status=Status.PENDING).update(next_attempt_at=now)
    again = queryset.filter(status=Status.FAILED).update(
        status=Status.PENDING, attempts=0, next_attempt_at=now, locked_by="", locked_until=None
    )
    return int(sooner) + int(again)


def deliver_due_safely(**kwargs: Any) -> DeliveryRound | None:
    """deliver_due() for loops that do other work too (the sync worker): a failure is logged, not raised."""
    try:
        return deliver_due(**kwargs)
    except Exception:
        log.exception("delivering webhooks failed")
        return None
