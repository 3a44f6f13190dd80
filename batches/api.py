"""The read-only JSON API: the mirror's batches for scripts, with a personal token.

    GET /api/v1/batches                          the list page's filters, keyset pages
    GET /api/v1/batches/<account>/<batch_id>     one batch

Only `Authorization: Bearer <token>` authenticates (a session cookie does not), so no CSRF applies
and every answer is private to the token. Errors look like the upstream's:
`{"error": {"message", "type", "param"}}`. Nothing here calls the upstream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.http import Http404, HttpRequest, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_vary_headers

from batches import costs, tokens
from batches.accounts import get_accounts
from batches.auth import VIEW_PERMISSION
from batches.filters import BatchFilters, Cursor
from batches.models import Batch, ModelPrice
from batches.views.common import get_batch_or_404

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
FILTER_PARAMS = ("status", "account", "model", "endpoint", "created_from", "created_to", "q")
# The API never needs these per row; `raw` is what it returns.
DEFERRED = ("errors", "metadata", "metadata_text")


class ApiError(Exception):
    def __init__(self, status: int, type: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param

    def response(self) -> JsonResponse:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        response = JsonResponse({"error": error}, status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="batch-dashboard"'
        return response


def _bad_param(param: str, why: str) -> ApiError:
    return ApiError(400, "invalid_request_error", f"{param}: {why}", param)


def authenticate(request: HttpRequest) -> Any:
    """The user of the request's bearer token, or an ApiError (401 no/unknown/revoked, 403 role)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise ApiError(401, "authentication_error", "Missing token: send Authorization: Bearer <token>.")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "authentication_error", "Send the token as Authorization: Bearer <token>.")
    token = tokens.lookup(presented.strip())
    if token is None:
        raise ApiError(401, "authentication_error", "Invalid token.")
    if token.is_revoked:
        raise ApiError(401, "authentication_error", "This token has been revoked.")
    user = token.user
    if not user.is_active:
        raise ApiError(401, "authentication_error", "This token's user is inactive.")
    if not user.has_perm(VIEW_PERMISSION):
        raise ApiError(403, "permission_error", "This token's user may not view batches.")
    tokens.touch(token)
    return user


def api_view(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """GET/HEAD only, token authentication, JSON errors, never cached by anyone."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        try:
            if request.method not in ("GET", "HEAD"):
                refused = ApiError(405, "invalid_request_error", "This API is read-only: use GET.")
                response = refused.response()
                response["Allow"] = "GET, HEAD"
            else:
                user = authenticate(request)
                response = view(request, user, *args, **kwargs)
        except ApiError as exc:
            response = exc.response()
        except Http404:
            response = ApiError(404, "not_found_error", "No such batch.").response()
        add_never_cache_headers(response)
        patch_vary_headers(response, ("Authorization",))
        return response

    # The only caller-supplied authentication is the Authorization header, never a cookie.
    wrapped.csrf_exempt = True  # type: ignore[attr-defined]
    return wrapped


def parse_limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise _bad_param("limit", f"not a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def parse_filters(params: Mapping[str, str], accounts: list[str]) -> BatchFilters:
    """The list page's filters, but a value the page would ignore is a 400 naming its parameter."""
    given = {name: params[name] for name in FILTER_PARAMS if name in params}
    filters = BatchFilters.parse(given, accounts)
    if filters.problems:
        raise _bad_param(*filters.problems[0])
    after = params.get("after", "").strip()
    if after:
        cursor = Cursor.parse(after)
        if cursor is None:
            raise _bad_param("after", "not a cursor from a previous page's `next`")
        filters = dataclasses.replace(filters, before=cursor)
    return filters


def batch_item(batch: Batch, prices: Mapping[str, ModelPrice], now: Any) -> dict[str, Any]:
    """The upstream Batch object as last received, plus what the dashboard knows about it."""
    cost = costs.cost_of(batch, prices)
    raw = batch.raw if isinstance(batch.raw, dict) else {}
    return {
        **raw,
        "dashboard": {
            "account": batch.account,
            "url": reverse("batch_detail", args=[batch.account, batch.batch_id]),
            "first_seen_at": batch.first_seen_at,
            "synced_at": batch.synced_at,
            "stuck_reason": batch.get_stuck_reason(now) or None,
            "cost_estimate": None
            if cost is None
            else {
                "usd": str(cost.usd.quantize(costs.MICRO_USD, rounding=ROUND_HALF_UP)),
                "prices_effective_date": cost.effective_date,
                "batch_discount_percent": format(cost.batch_discount.normalize(), "f"),
            },
        },
    }


@api_view
def batch_list(request: HttpRequest, user: Any) -> JsonResponse:
    accounts = sorted(get_accounts())
    filters = parse_filters(request.GET, accounts)
    limit = parse_limit(request.GET.get("limit"))
    # One row more than returned says whether there is more, without a COUNT.
    rows = list(filters.page(Batch.objects.defer(*DEFERRED))[: limit + 1])
    batches, has_more = rows[:limit], len(rows) > limit
    prices = costs.cached_prices().prices
    now = timezone.now()
    next_url = None
    if has_more:
        query = {**filters.params(before=None), "limit": str(limit), "after": str(Cursor.after(batches[-1]))}
        next_url = request.build_absolute_uri(reverse("api_batch_list") + "?" + urlencode(query))
    return JsonResponse(
        {
            "object": "list",
            "data": [batch_item(batch, prices, now) for batch in batches],
            "first_id": batches[0].batch_id if batches else None,
            "last_id": batches[-1].batch_id if batches else None,
            "has_more": has_more,
            "next": next_url,
        }
    )


@api_view
def batch_detail(request: HttpRequest, user: Any, account: str, batch_id: str) -> JsonResponse:
    # Malformed ids and unknown accounts are a 404 here too, before any query.
    batch = get_batch_or_404(account, batch_id)
    return JsonResponse(batch_item(batch, costs.cached_prices().prices, timezone.now()))
