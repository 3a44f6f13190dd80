"""The admin: a read-only window on the mirror, the sync state and the audit trail.

Nothing here writes: the mirror belongs to the sync, and the audit trail is append-only (the
model refuses changes anyway; the admin does not even offer them).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from batches import operator_admin  # noqa: F401  (registers the API token and model price admins)
from batches.models import AuditEntry, Batch, SyncState


class ReadOnlyAdmin(admin.ModelAdmin):
    """View permission only: no add, change or delete, and so no bulk actions either."""

    actions: Any = None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "seq", "at", "event", "outcome", "actor_username", "account", "batch_id",
        "status_before", "status_after", "http_status", "request_id",
    )  # fmt: skip
    list_filter = ("event", "outcome", "account")
    search_fields = ("batch_id", "actor_username")
    ordering = ("-seq",)
    # No COUNT(*) of the whole table on every filtered page.
    show_full_result_count = False


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = (
        "batch_id",
        "account",
        "status",
        "model",
        "created_at",
        "synced_at",
        "cancel_requested_by",
    )
    list_filter = ("status", "account")
    search_fields = ("batch_id",)
    ordering = ("-created_at", "-id")
    show_full_result_count = False


@admin.register(SyncState)
class SyncStateAdmin(ReadOnlyAdmin):
    list_display = (
        "account", "last_success_at", "last_attempt_at", "consecutive_failures",
        "import_complete", "imported",
    )  # fmt: skip


# The outgoing webhooks and their deliveries (superusers only): batches/webhook_admin.py.
from batches import webhook_admin  # noqa: E402, F401
