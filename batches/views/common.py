"""What every view shares: the typed request and the lookup that never reaches the upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404, HttpRequest
from django_htmx.middleware import HtmxDetails

from batches.accounts import Account, get_account
from batches.auth import AUDIT_PERMISSION, CANCEL_PERMISSION, VIEW_PERMISSION
from batches.client import BATCH_ID_RE
from batches.models import Batch


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails
    user: AbstractBaseUser | AnonymousUser  # type: ignore[assignment]


def get_account_or_404(name: str) -> Account:
    account = get_account(name)
    if account is None:
        raise Http404("No such account.")
    return account


def get_batch_or_404(
    account_name: str, batch_id: str, *, only: tuple[str, ...] = (), defer: tuple[str, ...] = ()
) -> Batch:
    """A malformed id or an unknown account is a 404 here, before anything could go upstream.

    `only`/`defer`: the fields to load (the row never shows `raw`, which can be large)."""
    get_account_or_404(account_name)
    if not BATCH_ID_RE.fullmatch(batch_id):
        raise Http404("Not a batch id.")
    batch = Batch.objects.lookup(account_name, batch_id, only=only, defer=defer)
    if batch is None:
        raise Http404("No such batch in the mirror.")
    return batch


def requires(permission: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Signed in (else to the login page) and holding `permission` (else 403)."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        return login_required(permission_required(permission, raise_exception=True)(view))

    return decorate


viewer_required = requires(VIEW_PERMISSION)
audit_viewer_required = requires(AUDIT_PERMISSION)
# Before any lookup in the view: a viewer learns nothing, and nothing goes upstream.
operator_required = requires(CANCEL_PERMISSION)


def cancel_reason(request: HttpRequest) -> tuple[str, str]:
    """The reason typed for a cancel, and what is wrong with it ("" when nothing).

    Browsers send a textarea's line breaks as CRLF but count them as one character for maxlength.
    """
    reason = request.POST.get("reason", "").replace("\r\n", "\n").strip()
    limit = settings.CANCEL_REASON_MAX_LENGTH
    if len(reason) > limit:
        return reason, (
            f"The reason is {len(reason)} characters long; at most {limit} are allowed. Nothing was sent."
        )
    return reason, ""
