"""The project's ModelBackend: the user and its permissions in one query each, with the answers of
Django's own backend, and a role taken away applies at the next request."""

from __future__ import annotations

import pytest
from django.contrib.auth.backends import ModelBackend as DjangoModelBackend
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse

from batches.auth import CANCEL_PERMISSION, VIEW_PERMISSION, ModelBackend

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
