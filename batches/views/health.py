"""`/healthz` for load balancers and monitors.

The status code says whether this instance can serve pages: 200 when the database answers, 503
when it does not. A failing upstream does not take instances out of the balancer (they still
serve the last snapshot); it shows in the body, and `?strict=1` turns a stale account into a 503
for monitors that should page someone.
"""

from __future__ import annotations

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from batches.accounts import get_accounts
from batches.models import SyncState


@require_safe  # GET, and HEAD for load balancers that check with it
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        states = {s.account: s for s in SyncState.objects.all()}
    except DatabaseError as exc:
        return JsonResponse({"ok": False, "database": f"unreachable: {type(exc).__name__}"}, status=503)

    now = timezone.now()
    max_age = settings.HEALTHZ_MAX_SYNC_AGE
    accounts = {}
    for name in get_accounts():
        state = states.get(name)
        age = state.age(now) if state else None
        accounts[name] = {
            "last_success_age_seconds": round(age.total_seconds(), 1) if age is not None else None,
            "stale": age is None or age.total_seconds() > max_age,
            "failing": bool(state and state.is_failing),
            "error": (state.last_error or {}).get("title") if state and state.is_failing else None,
        }
    stale = any(a["stale"] for a in accounts.values())
    strict = request.GET.get("strict") == "1"
    body = {"ok": not (strict and stale), "database": "ok", "accounts": accounts}
    return JsonResponse(body, status=503 if strict and stale else 200)
