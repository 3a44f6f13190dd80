"""The admin of outgoing webhooks (imported by batches.admin).

Webhooks are configuration that sends the team's data elsewhere: only superusers see or edit
them, and the secret is never shown again once saved. Deliveries are a read-only log with two
actions: "send test" on webhooks, "retry now" on deliveries.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from batches import webhooks
from batches.admin import ReadOnlyAdmin  # defined before batches.admin imports this module
from batches.models import WEBHOOK_EVENTS, Webhook, WebhookDelivery


def _account_choices() -> list[tuple[str, str]]:
    return [("*", "* (every account)"), *((name, name) for name in sorted(settings.UPSTREAM_ACCOUNTS))]


class WebhookForm(forms.ModelForm):  # type: ignore[type-arg]
    account = forms.ChoiceField(choices=_account_choices)
    events = forms.MultipleChoiceField(choices=WEBHOOK_EVENTS, widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(
        required=False,
        max_length=200,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            "Signs generic bodies: header X-Batch-Dashboard-Signature: sha256=&lt;HMAC-SHA256 of the body, "
            "hex&gt;. Never shown again; leave empty to keep the current one."
        ),
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the secret: bodies go unsigned.")

    class Meta:
        model = Webhook
        fields = ["account", "url", "kind", "events", "enabled", "secret"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("clear_secret"):
            cleaned["secret"] = ""
        elif not cleaned.get("secret"):
            cleaned["secret"] = self.instance.secret if self.instance.pk else ""
        return cleaned


class SuperuserOnly:
    """Every permission of the admin class is the superuser flag, whatever the groups say."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


@admin.register(Webhook)
class WebhookAdmin(SuperuserOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    form = WebhookForm
    list_display = ("id", "account", "kind", "host", "event_list", "enabled", "signed", "created_at")
    list_display_links = ("id", "account")
    list_filter = ("account", "kind", "enabled")
    actions = ["send_test"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    @admin.display(description="host")
    def host(self, obj: Webhook) -> str:
        return obj.host

    @admin.display(description="events")
    def event_list(self, obj: Webhook) -> str:
        return ", ".join(obj.events) if isinstance(obj.events, list) else ""

    @admin.display(description="signed", boolean=True)
    def signed(self, obj: Webhook) -> bool:
        return bool(obj.secret)

    @admin.action(description="Send a test message")
    def send_test(self, request: HttpRequest, queryset: QuerySet[Webhook]) -> None:
        count = 0
        for webhook in queryset:
            webhooks.queue_test(webhook, request.user.get_username())
            count += 1
        self.message_user(
            request,
            f"Queued {count} test deliveries: the delivery loop (deliver_webhooks, or the sync worker) "
            "sends them within seconds; see Webhook deliveries.",
            messages.SUCCESS,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(SuperuserOnly, ReadOnlyAdmin):
    list_display = (
        "id", "created_at", "event", "webhook", "status", "attempts", "next_attempt_at",
        "last_status_code", "last_error", "delivered_at",
    )  # fmt: skip
    list_filter = ("status", "event")
    list_select_related = ("webhook",)
    readonly_fields = (
        "webhook", "event", "payload", "status", "attempts", "next_attempt_at", "locked_by", "locked_until",
        "last_attempt_at", "last_status_code", "last_response", "last_error", "created_at", "delivered_at",
    )  # fmt: skip
    actions = ["retry"]  # the one action of a read-only admin
    show_full_result_count = False

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    @admin.action(description="Retry now (failed and pending deliveries)", permissions=["retry"])
    def retry(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = webhooks.retry_now(queryset)
        self.message_user(request, f"{count} deliveries queued to be sent now.", messages.SUCCESS)
