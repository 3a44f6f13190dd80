from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from batches.auth import can_cancel


def dashboard(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    return {
        "poll_interval": settings.POLL_INTERVAL,
        "user_can_cancel": bool(user and user.is_authenticated and can_cancel(user)),
    }
