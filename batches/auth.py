"""Login plumbing: the optional single sign-on header and the two roles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend as BaseModelBackend
from django.contrib.auth.backends import RemoteUserBackend as BaseRemoteUserBackend
from django.contrib.auth.middleware import AuthenticationMiddleware as BaseAuthenticationMiddleware
from django.contrib.auth.middleware import RemoteUserMiddleware as BaseRemoteUserMiddleware
from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.views import redirect_to_login
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import resolve_url
from django.utils.functional import SimpleLazyObject
from django.utils.http import url_has_allowed_host_and_scheme
from django_htmx.http import HttpResponseClientRedirect

from batches.rows import RowLoader

OPERATORS = "Operators"
VIEWERS = "Viewers"
VIEW_PERMISSION = "batches.view_batch"
CANCEL_PERMISSION = "batches.cancel_batch"
AUDIT_PERMISSION = "batches.view_auditentry"


class RemoteUserMiddleware(BaseRemoteUserMiddleware):
    """Trust the proxy's user header only when REMOTE_USER_HEADER names it; otherwise do nothing.

    Users signed in this way are created on first sight as viewers (no group grants more).
    """

    force_logout_if_no_header = False
    # Run synchronously under ASGI too: django-axes' backend, first in AUTHENTICATION_BACKENDS,
    # has no aauthenticate(), which Django's async path would call.
    async_capable = False  # type: ignore[assignment]

    def get_username(self, request: HttpRequest) -> str:
        # Both of Django's paths (process_request and, under ASGI, aprocess_request) ask here: a
        # KeyError is "no header", so with none configured every request is left alone.
        if not settings.REMOTE_USER_HEADER:
            raise KeyError("REMOTE_USER_HEADER is not set")
        return str(request.META[settings.REMOTE_USER_HEADER])


class HtmxAccessMiddleware:
    """An htmx GET refused for want of a session or a role takes the whole page along.

    Once a session has ended (signed out in another tab, expired, deleted by an admin), the next
    poll of an open page is redirected to the login page. The browser would follow that redirect
    inside the htmx request and swap the login form into a table row or the live section. Instead
    htmx is told to load the login page as the page (HX-Redirect), with `next` the page the person
    was looking at rather than the fragment. Once a role has been taken away, the polls get 403,
    which htmx does not swap: the page would look live while frozen. It is reloaded instead
    (HX-Refresh), and then says why (403.html). POSTs are left alone: the cancel dialogs see the
    answer themselves and say what happened, keeping what was typed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.method not in ("GET", "HEAD") or request.headers.get("HX-Request") != "true":
            return response
        if response.status_code == 403:
            response["HX-Refresh"] = "true"
            return response
        login = resolve_url(settings.LOGIN_URL)
        if response.status_code != 302 or urlsplit(response["Location"]).path != login:
            return response
        page = urlsplit(request.headers.get("HX-Current-URL", ""))
        back = page.path + (f"?{page.query}" if page.query else "")
        # Only a path of this site (the login view checks `next` again before following it).
        if back.startswith("/") and url_has_allowed_host_and_scheme(back, allowed_hosts=None):
            return HttpResponseClientRedirect(redirect_to_login(back, login).url)
        return HttpResponseClientRedirect(login)


def can_cancel(user: object) -> bool:
    return bool(getattr(user, "has_perm", None)) and user.has_perm(CANCEL_PERMISSION)  # type: ignore[attr-defined]


class AuthenticationMiddleware(BaseAuthenticationMiddleware):
    """Django's, but while it loads the request's user it offers the backend the user read with
    the session (batches/sessions.py), so that signing a request in costs one query."""

    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: _get_user(request))  # type: ignore[assignment]


def _get_user(request: HttpRequest) -> Any:
    if not hasattr(request, "_cached_user"):
        token = _signing_in.set(request.session)
        try:
            request._cached_user = auth.get_user(request)  # type: ignore[attr-defined]
        finally:
            _signing_in.reset(token)
    return request._cached_user  # type: ignore[attr-defined]


# The session whose user auth.get_user() is loading, set only meanwhile (AuthenticationMiddleware).
_signing_in: ContextVar[Any] = ContextVar("batches_signing_in", default=None)


def prefetched_user(pk: Any) -> Any:
    """The user read with the session being signed in, if that session names the user `pk`.

    Handed out once: whoever asks again reads the database, as with Django's backend.
    """
    session = _signing_in.get()
    user = getattr(session, "prefetched_user", None)
    if user is None or user.pk != pk:
        return None
    session.prefetched_user = None
    return user


class ModelBackend(BaseModelBackend):
    """Django's ModelBackend with the two lookups every signed-in request makes done cheaply.

    Each request loads its user and then its permissions (a view checks `view_batch`, a page
    asks whether to show Cancel). Through the ORM that is three queries whose building costs
    several times their running. Here both come with the session when it was read with them
    (batches/sessions.py); otherwise the user is one prepared SELECT (batches/rows.py) and the
    permissions of the user and of its groups one query. Nothing is kept across requests, so
    taking a role away applies at the user's next request, as with Django's own backend.
    tests/test_auth_backend.py holds both backends to the same answers.
    """

    def get_user(self, user_id: Any) -> Any:
        pk = user_pk(user_id)
        if pk is None:  # a session naming no valid key: signed out, as with Django's
            return None
        user = prefetched_user(pk) or USER_ROWS.get(pk)
        return user if user is not None and self.user_can_authenticate(user) else None

    def get_all_permissions(self, user_obj: Any, obj: object = None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if user_obj.is_superuser:  # every permission: Django's own query
            return super().get_all_permissions(user_obj, obj)
        if not hasattr(user_obj, "_perm_cache"):  # the per-request cache Django's backend keeps
            with connection.cursor() as cursor:
                cursor.execute(_permissions_sql(), [user_obj.pk, user_obj.pk])
                user_obj._perm_cache = {f"{app}.{codename}" for app, codename in cursor.fetchall()}
        return user_obj._perm_cache


USER_ROWS = RowLoader(User, ("id",))


def user_pk(value: Any) -> Any:
    """The user's primary key from what a session holds (a string), or None if it names none."""
    if value is None:
        return None
    try:
        return User._meta.pk.to_python(value)
    except ValidationError:
        return None


# Table names come from django.contrib.auth's models (this project's user model is its User),
# never from input; the user's id is a parameter, or the column of a query around this one.
@functools.cache
def permissions_from(user_id: str) -> str:
    """FROM and WHERE for the user's own permissions and its groups' (`p`, with `ct` its content
    type), the user's id being the SQL `user_id`: "%s" or a column such as "s.user_id"."""
    tables = {
        "permission": Permission._meta.db_table,
        "content_type": ContentType._meta.db_table,
        "user_perms": User.user_permissions.through._meta.db_table,
        "user_groups": User.groups.through._meta.db_table,
        "group_perms": Group.permissions.through._meta.db_table,
    }
    return (  # noqa: S608
        " FROM {permission} p"
        " JOIN {content_type} ct ON ct.id = p.content_type_id"
        " WHERE p.id IN (SELECT permission_id FROM {user_perms} WHERE user_id = {user_id})"
        " OR p.id IN (SELECT gp.permission_id FROM {group_perms} gp"
        " JOIN {user_groups} ug ON ug.group_id = gp.group_id WHERE ug.user_id = {user_id})"
    ).format(user_id=user_id, **{name: _quote(table) for name, table in tables.items()})


def _permissions_sql() -> str:
    """The "app_label.codename" of the user's own permissions and of its groups', in one query."""
    return "SELECT ct.app_label, p.codename" + permissions_from("%s")


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


class RemoteUserBackend(BaseRemoteUserBackend, ModelBackend):
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


def ensure_roles() -> None:
    """Create the two groups with their permissions if missing (migration 0002 does it first;
    a flushed test database or a hand-deleted group needs it again)."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions

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
