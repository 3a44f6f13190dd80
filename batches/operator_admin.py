"""Admin pages for the API tokens (see and revoke, never create) and the model price table."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from batches import tokens
from batches.models import ApiToken, ModelPrice


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made by their owners on /account/tokens/, the only place the plaintext appears.

    Staff with the change permission revoke them here; nothing about a token can be edited.
    """

    list_display = ("prefix", "name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("prefix", "name", "user__username")
    list_select_related = ("user",)
    ordering = ("-created_at", "-id")
    actions = ["revoke_tokens"]
    fields = ("user", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = tokens.revoke(queryset)
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """USD per million tokens; the batch discount applies on top. `manage.py load_prices` seeds it."""

    list_display = ("model", "input", "cached_input", "output", "batch_discount", "effective_date", "note")
    search_fields = ("model",)
    ordering = ("model",)
