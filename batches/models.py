"""The mirror of the upstream batches, their progress samples, sync state and the cancel audit."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from typing import Any

from django.conf import settings
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models
from django.utils import timezone

from batches.rows import RowLoader

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
CANCELLABLE_STATUSES = ("validating", "in_progress", "finalizing")
TERMINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
ALL_STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES
POLL_VERSION_SECONDS = 30
# What a polled fragment's version is made of (Batch.poll_version), with the time bucket.
POLL_FIELDS = (
    "status", "request_total", "request_completed", "request_failed", "total_tokens",
    "output_file_id", "error_file_id", "cancel_requested_by", "cancel_requested_at", "progressed_at",
)  # fmt: skip
TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class BatchManager(models.Manager["Batch"]):
    def lookup(
        self, account: str, batch_id: str, *, only: tuple[str, ...] = (), defer: tuple[str, ...] = ()
    ) -> Batch | None:
        """One batch by its natural key, or None. `only`/`defer` as in QuerySet.only()/defer().

        Every open page polls a batch every few seconds, and most polls end in a 204 right after
        this lookup: see batches/rows.py for why it is not a QuerySet.
        """
        return _loader(only, defer).get(account, batch_id)

    def poll_state(self, account: str, batch_id: str) -> tuple[str, str] | None:
        """(status, poll version) of one batch, or None: what an unchanged poll needs, read
        without building the instance."""
        values = _loader(_POLL_READS, ()).values(account, batch_id)
        if values is None:
            return None
        return values["status"], poll_version(account, batch_id, [values[name] for name in POLL_FIELDS])


# What Batch.objects.poll_state() reads.
_POLL_READS = ("account", "batch_id", *POLL_FIELDS)
POLL_VERSION_RE = re.compile(r"[0-9a-f]{16}")  # what poll_version() gives out


def poll_version(account: str, batch_id: str, shown: list[Any], now: dt.datetime | None = None) -> str:
    """The version of what a batch's polled fragments show, from the values of its POLL_FIELDS.

    A poll sends the version of the fragment it has; while nothing changed it gets 204 No Content:
    no rendering, no bytes. The time bucket makes relative times and the stuck flag move on at
    least every POLL_VERSION_SECONDS, and ends each version's life. The digest is keyed with the
    SECRET_KEY, so a version is one this server gave out in a page or a fragment; that is what lets
    an unchanged poll be answered before the request is signed in (views.monitor.unchanged_poll).
    Its form is POLL_VERSION_RE.
    """
    bucket = int((now or timezone.now()).timestamp() // POLL_VERSION_SECONDS)
    message = repr((account, batch_id, *shown, bucket)).encode()
    return hashlib.blake2b(message, key=_poll_key(settings.SECRET_KEY), digest_size=8).hexdigest()


@functools.cache
def _poll_key(secret: str) -> bytes:
    return hashlib.blake2b(secret.encode(), person=b"poll-version").digest()


@functools.cache
def _loader(only: tuple[str, ...], defer: tuple[str, ...]) -> RowLoader[Batch]:
    return RowLoader(Batch, ("account", "batch_id"), only=only, defer=defer)


class Batch(models.Model):
    """One upstream Batch object, as last seen. `raw` keeps the object exactly as received."""

    account = models.CharField(max_length=40)
    batch_id = models.CharField(max_length=128)
    status = models.CharField(max_length=20)
    endpoint = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    completion_window = models.CharField(max_length=20, blank=True)
    input_file_id = models.CharField(max_length=128, blank=True)
    output_file_id = models.CharField(max_length=128, blank=True)
    error_file_id = models.CharField(max_length=128, blank=True)

    created_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    # request_counts and usage are optional upstream: null means "not reported".
    request_total = models.IntegerField(null=True, blank=True)
    request_completed = models.IntegerField(null=True, blank=True)
    request_failed = models.IntegerField(null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    cached_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    reasoning_tokens = models.BigIntegerField(null=True, blank=True)
    total_tokens = models.BigIntegerField(null=True, blank=True)

    errors = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(null=True, blank=True)
    description = models.CharField(max_length=512, blank=True)
    # Lower-cased "key=value" lines of the metadata: a plain text column that every database
    # can search with LIKE, instead of JSON operators that differ between SQLite and PostgreSQL.
    metadata_text = models.TextField(blank=True)
    raw = models.JSONField()

    first_seen_at = models.DateTimeField(default=timezone.now)
    synced_at = models.DateTimeField(default=timezone.now)
    # When request_counts last changed, or the status: what the "stuck" flag measures from.
    progressed_at = models.DateTimeField(default=timezone.now)
    status_changed_at = models.DateTimeField(default=timezone.now)

    # A cancel claimed by the dashboard: at most one upstream cancel in flight per batch.
    cancel_requested_by = models.CharField(max_length=150, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    objects = BatchManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "batch_id"], name="batch_unique_per_account"),
        ]
        indexes = [
            # Keyset pagination and the default order: newest first.
            models.Index(fields=["-created_at", "-id"], name="batch_newest"),
            models.Index(fields=["status", "-created_at"], name="batch_status_newest"),
            models.Index(fields=["account", "-created_at"], name="batch_account_newest"),
            models.Index(fields=["model"], name="batch_model"),
            models.Index(fields=["endpoint"], name="batch_endpoint"),
            models.Index(fields=["batch_id"], name="batch_id_lookup"),
        ]
        permissions = [("cancel_batch", "Can cancel batches upstream")]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"{self.account}/{self.batch_id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_cancellable(self) -> bool:
        return self.status in CANCELLABLE_STATUSES

    @property
    def short_id(self) -> str:
        return self.batch_id.removeprefix("batch_")[:10]

    @property
    def requests_done(self) -> int:
        return (self.request_completed or 0) + (self.request_failed or 0)

    @property
    def completed_percent(self) -> float:
        return 100.0 * (self.request_completed or 0) / self.request_total if self.request_total else 0.0

    @property
    def failed_percent(self) -> float:
        return 100.0 * (self.request_failed or 0) / self.request_total if self.request_total else 0.0

    @property
    def has_usage(self) -> bool:
        return self.total_tokens is not None

    @property
    def cached_share(self) -> float | None:
        if not self.input_tokens or self.cached_tokens is None:
            return None
        return 100.0 * self.cached_tokens / self.input_tokens

    @property
    def terminal_at(self) -> dt.datetime | None:
        return self.completed_at or self.failed_at or self.expired_at or self.cancelled_at

    def elapsed(self, now: dt.datetime | None = None) -> dt.timedelta:
        end = self.terminal_at or now or timezone.now()
        return max(dt.timedelta(0), end - self.created_at)

    def time_left(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        """Time until `expires_at`, for batches that are still running."""
        if self.is_terminal or self.status == "cancelling" or not self.expires_at:
            return None
        return max(dt.timedelta(0), self.expires_at - (now or timezone.now()))

    def poll_version(self, now: dt.datetime | None = None) -> str:
        """The version of what this batch's polled fragments show (see `poll_version()`)."""
        return poll_version(self.account, self.batch_id, [getattr(self, name) for name in POLL_FIELDS], now)

    def get_stuck_reason(self, now: dt.datetime | None = None) -> str:
        """Why an active batch looks hung, or "" when it does not."""
        now = now or timezone.now()
        minutes = dt.timedelta(minutes=1)
        if self.status == "finalizing" and self.finalizing_at:
            limit = settings.FINALIZING_STUCK_AFTER_MINUTES
            if now - self.finalizing_at > limit * minutes:
                return f"finalizing for more than {limit} minutes"
        elif self.status == "cancelling" and self.cancelling_at:
            limit = settings.CANCELLING_STUCK_AFTER_MINUTES
            if now - self.cancelling_at > limit * minutes:
                return f"cancelling for more than {limit} minutes"
        elif self.status in ("validating", "in_progress"):
            limit = settings.STUCK_AFTER_MINUTES
            if now - self.progressed_at > limit * minutes:
                return f"no progress for more than {limit} minutes"
        return ""

    def timeline(self) -> list[dict[str, Any]]:
        """The lifecycle timestamps that are set, in order, each with the time since the previous
        (ordered by time: the upstream's own order may differ from the usual one, e.g. a cancel
        requested while validating)."""
        steps = sorted(
            (at, name)
            for name in TIMESTAMP_FIELDS
            if name != "expires_at" and (at := getattr(self, name)) is not None
        )
        return [
            {
                "name": name.removesuffix("_at").replace("_", " "),
                "at": at,
                "after": at - steps[i - 1][0] if i else None,
            }
            for i, (at, name) in enumerate(steps)
        ]


class BatchSample(models.Model):
    """request_counts at one moment, kept while a batch is active, for the rate, ETA and chart."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField()
    completed = models.IntegerField()
    failed = models.IntegerField()
    total = models.IntegerField()

    class Meta:
        indexes = [models.Index(fields=["batch", "at"], name="sample_batch_at")]
        ordering = ["at"]

    def __str__(self) -> str:
        return f"{self.batch_id} at {self.at:%Y-%m-%d %H:%M:%S}: {self.completed}+{self.failed}/{self.total}"


class SyncState(models.Model):
    """Per account: how fresh the mirror is, the last failure, the first import's progress."""

    account = models.CharField(max_length=40, primary_key=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # A lease: a refresh runs only in the process that set this; others skip (coalescing).
    running_since = models.DateTimeField(null=True, blank=True)
    running_owner = models.CharField(max_length=100, blank=True)
    # Back off after failures: no attempt before this time.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.IntegerField(default=0)
    last_error = models.JSONField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # Not a failure, but worth a banner: e.g. the upstream cut a listing short.
    last_warning = models.TextField(blank=True)
    # The first import pages from the newest to the oldest; `import_after` is the resume cursor.
    import_complete = models.BooleanField(default=False)
    import_after = models.CharField(max_length=128, blank=True)
    imported = models.IntegerField(default=0)
    last_cycle_requests = models.IntegerField(default=0)
    last_cycle_seconds = models.FloatField(default=0.0)
    # Bumped (F() + 1) by every store_batches that created or changed a row: what the list page's
    # cached results are keyed on, so that every process sees a change at once.
    mirror_version = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.account

    @property
    def is_failing(self) -> bool:
        return self.consecutive_failures > 0

    def age(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        if self.last_success_at is None:
            return None
        return (now or timezone.now()) - self.last_success_at


class AppendOnlyError(Exception):
    """Audit entries are never changed or removed, not even by the admin."""


class AuditEntryQuerySet(models.QuerySet["AuditEntry"]):
    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("The audit trail is append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("The audit trail is append-only.")


class AuditEntry(models.Model):
    """One link of the tamper-evident audit chain. Written only by batches.audit.append()."""

    class Event(models.TextChoices):
        CANCEL = "cancel", "Cancel requested from the dashboard"
        REACHED = "reached", "Batch reached a terminal state after a dashboard cancel"
        OUTSIDE = "outside", "Cancelled outside the dashboard"

    class Outcome(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        REFUSED = "refused", "Refused upstream"
        IN_FLIGHT = "in_flight", "Already requested"
        ERROR = "error", "Upstream unreachable"
        OBSERVED = "observed", "Observed"

    seq = models.BigAutoField(primary_key=True)
    at = models.DateTimeField()
    event = models.CharField(max_length=10, choices=Event.choices)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    # The foreign key may go when a user is deleted; the name and email stay as text.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_username = models.CharField(max_length=150, blank=True)
    actor_email = models.CharField(max_length=254, blank=True)
    account = models.CharField(max_length=40)
    batch_id = models.CharField(max_length=128)
    status_before = models.CharField(max_length=20, blank=True)
    status_after = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    client_ip = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    http_status = models.IntegerField(null=True, blank=True)
    error_type = models.CharField(max_length=100, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    request_id = models.CharField(max_length=200, blank=True)
    # When the mirror saw the state this entry speaks of (REACHED and OUTSIDE entries).
    observed_at = models.DateTimeField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["account", "batch_id"], name="audit_batch"),
            models.Index(fields=["actor_username"], name="audit_actor"),
            models.Index(fields=["at"], name="audit_at"),
        ]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.event} {self.account}/{self.batch_id} {self.outcome}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("The audit trail is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("The audit trail is append-only.")


class AuditHead(models.Model):
    """The single row that appends lock, so the chain stays linear under concurrency."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_hash = models.CharField(max_length=64, default="0" * 64)
    count = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit head after {self.count} entries"


# --- Outgoing webhooks ----------------------------------------------------------------------------

WEBHOOK_EVENT_TERMINAL = "batch.terminal"
WEBHOOK_EVENT_CANCEL = "batch.cancel_requested"
WEBHOOK_EVENT_TEST = "webhook.test"
WEBHOOK_EVENTS = (
    (WEBHOOK_EVENT_TERMINAL, "A batch reached a terminal state (completed, failed, expired, cancelled)"),
    (WEBHOOK_EVENT_CANCEL, "A cancel from the dashboard was accepted"),
)


def default_webhook_events() -> list[str]:
    return [event for event, _ in WEBHOOK_EVENTS]


class Webhook(models.Model):
    """Where to tell about batch events of one account (or of every account: "*").

    Sent by batches.webhooks: the events only queue a WebhookDelivery, a delivery loop sends it.
    """

    class Kind(models.TextChoices):
        GENERIC = "generic", "Generic JSON (signed with the secret)"
        SLACK = "slack", "Slack-compatible"

    account = models.CharField(
        max_length=40, help_text='A configured account name, or "*" for every account.'
    )
    url = models.URLField(max_length=2000, help_text="http(s) only; private addresses are refused.")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.GENERIC)
    events = models.JSONField(default=default_webhook_events)
    enabled = models.BooleanField(default=True)
    secret = models.CharField(
        max_length=200,
        blank=True,
        help_text="Signs the body: header X-Batch-Dashboard-Signature: sha256=<HMAC-SHA256 hex>.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["account", "id"]

    def __str__(self) -> str:
        # Never the whole URL: a Slack webhook's path is its credential.
        return f"{self.kind} webhook #{self.pk} for {self.account} → {self.host}"

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        try:
            return urlsplit(self.url).hostname or "?"
        except ValueError:
            return "?"

    def wants(self, event: str) -> bool:
        return isinstance(self.events, list) and event in self.events

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from batches.webhook_url import validate_webhook_url

        errors: dict[str, Any] = {}
        if self.account != "*" and self.account not in settings.UPSTREAM_ACCOUNTS:
            known = ", ".join(sorted(settings.UPSTREAM_ACCOUNTS)) or "none"
            errors["account"] = f'Not a configured account (configured: {known}); "*" means every account.'
        known_events = {event for event, _ in WEBHOOK_EVENTS}
        if not isinstance(self.events, list) or not self.events or not set(self.events) <= known_events:
            errors["events"] = "Choose at least one of the known events."
        if self.url:
            try:
                validate_webhook_url(self.url)
            except ValidationError as exc:
                errors["url"] = exc.messages
        if errors:
            raise ValidationError(errors)


class WebhookDelivery(models.Model):
    """One event for one webhook: queued by the event, sent (and retried) by the delivery loop."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # The claim of the loop that is sending it: a claim whose lease ran out may be taken over.
    locked_by = models.CharField(max_length=100, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.IntegerField(null=True, blank=True)
    last_response = models.TextField(blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="webhook_delivery_due")]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"delivery #{self.pk} {self.event} ({self.status})"


class ApiToken(models.Model):
    """A personal token for the read-only JSON API. Shown once at creation; only its hash is kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # The token's first characters, to recognise it in lists (never enough to use it).
    prefix = models.CharField(max_length=8)
    # SHA-256 (hex) of the whole token: what a request's token is looked up by.
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class ModelPrice(models.Model):
    """List prices of one model in USD per million tokens, for the cost estimates."""

    model = models.CharField(max_length=200, unique=True)
    input = models.DecimalField("input $/1M", max_digits=12, decimal_places=6)
    cached_input = models.DecimalField("cached input $/1M", max_digits=12, decimal_places=6)
    output = models.DecimalField("output $/1M", max_digits=12, decimal_places=6)
    batch_discount = models.DecimalField(
        "batch discount %", max_digits=5, decimal_places=2, default=50,
        help_text="Percent off the list prices for the Batch API.",
    )  # fmt: skip
    effective_date = models.DateField(help_text="The day these prices were taken from the price list.")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(input__gte=0, cached_input__gte=0, output__gte=0),
                name="modelprice_not_negative",
                violation_error_message="Prices cannot be negative.",
            ),
            models.CheckConstraint(
                condition=models.Q(batch_discount__gte=0, batch_discount__lte=100),
                name="modelprice_discount_percent",
                violation_error_message="The batch discount is a percentage between 0 and 100.",
            ),
        ]

    def __str__(self) -> str:
        return self.model


class Session(AbstractBaseSession):
    """Django's database session, plus the id of its signed-in user (batches/sessions.py).

    The column lets one SELECT read a request's session with its user and permissions, and
    deleting a user deletes the user's sessions with it.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )

    class Meta(AbstractBaseSession.Meta):
        db_table = "batches_session"

    @classmethod
    def get_session_store_class(cls) -> type[Any]:
        from batches.sessions import SessionStore

        return SessionStore
