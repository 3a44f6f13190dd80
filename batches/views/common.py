"""What every view shares: the typed request and the lookup that never reaches the upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404, HttpRequest
from django_htmx.middleware import HtmxDetails

from batches.accounts import Account, get_account
from batches.auth import VIEW_PERMISSION
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


def viewer_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Signed in (else to the login page) and a viewer or operator (else 403)."""
    return login_required(permission_required(VIEW_PERMISSION, raise_exception=True)(view))
