"""Single sign-on behind an authenticating proxy: the configured header only, under WSGI and ASGI."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import AsyncClient, Client
from django.urls import reverse

from batches.auth import can_cancel

pytestmark = pytest.mark.django_db

HEADER = {"X-Remote-User": "dana"}


@pytest.fixture
def sso(settings):  # type: ignore[no-untyped-def]
    settings.REMOTE_USER_HEADER = "HTTP_X_REMOTE_USER"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "batches.auth.RemoteUserBackend"]


def test_the_header_is_ignored_unless_configured(settings, alice):
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "batches.auth.RemoteUserBackend"]
    for headers in ({"X-Remote-User": "alice"}, {"Remote-User": "alice"}):
        response = Client().get(reverse("batch_list"), headers=headers)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    asgi = async_to_sync(AsyncClient().get)(reverse("batch_list"), headers={"X-Remote-User": "alice"})
    assert asgi.status_code == 302


def test_a_user_first_seen_through_the_header_is_created_as_a_viewer(sso):
    response = Client().get(reverse("batch_list"), headers=HEADER)

    assert response.status_code == 200
    dana = User.objects.get(username="dana")
    assert list(dana.groups.values_list("name", flat=True)) == ["Viewers"]
    assert not can_cancel(dana)


def test_the_configured_header_signs_in_under_asgi_too(sso, alice):
    response = async_to_sync(AsyncClient().get)(reverse("batch_list"), headers={"X-Remote-User": "alice"})

    assert response.status_code == 200
    assert "alice · operator" in response.content.decode()


def test_another_header_does_not_sign_in(sso, alice):
    response = Client().get(reverse("batch_list"), headers={"Remote-User": "alice"})

    assert response.status_code == 302
