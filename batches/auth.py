"""Login plumbing: the optional single sign-on header and the two roles."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.backends import RemoteUserBackend as BaseRemoteUserBackend
from django.contrib.auth.middleware import RemoteUserMiddleware as BaseRemoteUserMiddleware
from django.contrib.auth.models import Group
from django.http import HttpRequest

OPERATORS = "Operators"
VIEWERS = "Viewers"
VIEW_PERMISSION = "batches.view_batch"
CANCEL_PERMISSION = "batches.cancel_batch"


class RemoteUserMiddleware(BaseRemoteUserMiddleware):
    """Trust the proxy's user header only when REMOTE_USER_HEADER names it; otherwise do nothing.

    Users signed in this way are created on first sight as viewers (no group grants more).
    """

    force_logout_if_no_header = False

    def process_request(self, request: HttpRequest) -> None:
        if not settings.REMOTE_USER_HEADER:
            return
        self.header = settings.REMOTE_USER_HEADER  # type: ignore[misc]
        super().process_request(request)


def can_cancel(user: object) -> bool:
    return bool(getattr(user, "has_perm", None)) and user.has_perm(CANCEL_PERMISSION)  # type: ignore[attr-defined]


class RemoteUserBackend(BaseRemoteUserBackend):
    """Users first seen through the proxy header start as viewers; an admin may promote them."""

    def configure_user(self, request: HttpRequest | None, user: Any, created: bool = True) -> Any:
        if created:
            group, _ = Group.objects.get_or_create(name=VIEWERS)
            user.groups.add(group)
        return user


def client_ip(request: HttpRequest) -> str:
    """The client address: from CLIENT_IP_HEADER when a trusted proxy is configured, else the socket.

    With a proxy header, the first address of a comma-separated list is the client's.
    """
    header = settings.CLIENT_IP_HEADER
    if header and request.META.get(header):
        return str(request.META[header]).split(",")[0].strip()[:64]
    return str(request.META.get("REMOTE_ADDR", ""))[:64]


def axes_client_ip(request: HttpRequest) -> str:
    return client_ip(request)


def ensure_roles() -> None:
    """Create the two groups with their permissions if missing (migration 0002 does it first;
    a flushed test database or a hand-deleted group needs it again)."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Permission

    # Idempotent; needed where a flush removed the permissions and content types too.
    create_permissions(apps.get_app_config("batches"), verbosity=0)
    perms = {
        p.codename: p
        for p in Permission.objects.filter(
            content_type__app_label="batches", codename__in=["view_batch", "view_auditentry", "cancel_batch"]
        )
    }
    viewers, _ = Group.objects.get_or_create(name=VIEWERS)
    viewers.permissions.add(perms["view_batch"], perms["view_auditentry"])
    operators, _ = Group.objects.get_or_create(name=OPERATORS)
    operators.permissions.add(*perms.values())
