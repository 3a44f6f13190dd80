"""The project's ModelBackend and sessions: the session, its user and the user's permissions in one
query, with the answers of Django's own backend, and a role taken away applies at the next request."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from batches.auth import CANCEL_PERMISSION, VIEW_PERMISSION, ModelBackend
from batches.models import Session
from batches.sessions import SessionStore
from tests.conftest import signed_in_client

pytestmark = pytest.mark.django_db


def _fresh(user: User) -> User:
    return User.objects.get(pk=user.pk)  # no permission cache from an earlier check


def test_permissions_are_those_djangos_backend_finds(alice, bob, charlie):
    # dave holds one permission of his own and one through each of two groups.
    dave = User.objects.create_user("dave", "dave@example.com", "dave-password-1")
    dave.user_permissions.add(Permission.objects.get(codename="view_webhook"))
    dave.groups.add(Group.objects.get(name="Viewers"))
    auditors = Group.objects.create(name="Auditors")
    auditors.permissions.add(Permission.objects.get(codename="view_auditentry"))
    dave.groups.add(auditors)
    admin = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    gone = User.objects.create_user("gone", "gone@example.com", "gone-password-1", is_active=False)
    gone.groups.add(Group.objects.get(name="Operators"))

    for user in (alice, bob, charlie, dave, admin, gone):
        ours = ModelBackend().get_all_permissions(_fresh(user))
        assert ours == DjangoModelBackend().get_all_permissions(_fresh(user)), user.username

    assert {VIEW_PERMISSION, CANCEL_PERMISSION} <= ModelBackend().get_all_permissions(_fresh(alice))
    assert CANCEL_PERMISSION not in ModelBackend().get_all_permissions(_fresh(bob))
    assert ModelBackend().get_all_permissions(_fresh(charlie)) == set()
    assert {
        "batches.view_webhook",
        "batches.view_auditentry",
        VIEW_PERMISSION,
    } <= ModelBackend().get_all_permissions(_fresh(dave))
    assert ModelBackend().get_all_permissions(_fresh(gone)) == set()


def test_permissions_cost_one_query_per_request(bob, django_assert_num_queries):
    user = _fresh(bob)
    with django_assert_num_queries(1):
        assert user.has_perm(VIEW_PERMISSION)
        assert not user.has_perm(CANCEL_PERMISSION)


def test_get_user_loads_the_whole_user_and_refuses_the_inactive(bob, django_assert_num_queries):
    with django_assert_num_queries(1):
        user = ModelBackend().get_user(str(bob.pk))  # sessions keep the key as a string
    assert user is not None
    assert (user.pk, user.username, user.password, user.date_joined) == (
        bob.pk,
        "bob",
        bob.password,
        bob.date_joined,
    )
    assert user.get_deferred_fields() == set()

    User.objects.filter(pk=bob.pk).update(is_active=False)
    assert ModelBackend().get_user(str(bob.pk)) is None
    assert ModelBackend().get_user("999999") is None
    assert ModelBackend().get_user("not-a-key") is None


def test_a_role_taken_away_applies_at_the_next_request(bob_client, bob):
    url = reverse("batch_list")
    assert bob_client.get(url).status_code == 200

    bob.groups.clear()
    assert bob_client.get(url).status_code == 403

    bob.groups.add(Group.objects.get(name="Viewers"))
    assert bob_client.get(url).status_code == 200


def test_a_password_change_elsewhere_signs_the_session_out(bob_client, bob):
    url = reverse("batch_list")
    assert bob_client.get(url).status_code == 200

    bob.set_password("a-new-password-2")
    bob.save()
    response = bob_client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


# --- the user read with the session (batches/sessions.py) -----------------------------------------


def _signed_in_queries(client, url: str) -> list[str]:
    client.get(url)  # the filter menus and the price table are cached after one view
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return [q["sql"] for q in queries.captured_queries]


def test_a_signed_in_request_reads_session_user_and_permissions_in_one_query(bob_client):
    queries = _signed_in_queries(bob_client, reverse("batch_list"))
    session, user, permission = Session._meta.db_table, User._meta.db_table, Permission._meta.db_table
    assert [sql for sql in queries if session in sql or user in sql or permission in sql] == [queries[0]]
    assert all(table in queries[0] for table in (session, user, permission))


def test_the_user_read_with_the_session_is_the_user_djangos_backend_loads(alice, bob, charlie):
    dave = User.objects.create_user("dave", "dave@example.com", "dave-password-1", first_name="Dave")
    dave.user_permissions.add(Permission.objects.get(codename="view_webhook"))
    dave.groups.add(Group.objects.get(name="Viewers"))
    admin = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    for user in (alice, bob, charlie, dave, admin):
        store = SessionStore(signed_in_client(user).session.session_key)
        store.load()
        read = store.prefetched_user
        expected = _fresh(user)
        assert read is not None
        assert [getattr(read, f.attname) for f in User._meta.concrete_fields] == [
            getattr(expected, f.attname) for f in User._meta.concrete_fields
        ], user.username
        assert ModelBackend().get_all_permissions(read) == DjangoModelBackend().get_all_permissions(expected)


def test_a_session_row_naming_another_user_is_not_trusted(bob_client, bob, alice):
    # The row's user column is only a hint for the query: the session's data names the user.
    Session.objects.filter(session_key=bob_client.session.session_key).update(user=alice)
    response = bob_client.get(reverse("batch_list"))
    assert response.status_code == 200
    assert response.wsgi_request.user.username == "bob"
    assert not response.wsgi_request.user.has_perm(CANCEL_PERMISSION)  # alice's, not bob's


def test_signing_in_records_the_user_on_the_session_row_and_logging_out_removes_it(bob):
    client = Client()
    response = client.post(reverse("login"), {"username": "bob", "password": "bob-password-1"})
    assert response.status_code == 302
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert Session.objects.get(session_key=key).user_id == bob.pk

    client.post(reverse("logout"))
    assert not Session.objects.filter(session_key=key).exists()
