"""Shared fixtures: the named users and a dashboard account pointed at a live simulator.

alice is the operator, bob the viewer, charlie signed in but in neither group.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from batches.accounts import Account

pytest_plugins = ["tests.sim_fixtures"]

SIM_KEY = "sk-sim-local"


def _user(username: str, group: str | None) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", f"{username}-password-1")
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def alice(db: None) -> User:
    return _user("alice", "Operators")


@pytest.fixture
def bob(db: None) -> User:
    return _user("bob", "Viewers")


@pytest.fixture
def charlie(db: None) -> User:
    return _user("charlie", None)


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice: User) -> Client:
    return _client(alice)


@pytest.fixture
def bob_client(bob: User) -> Client:
    return _client(bob)


@pytest.fixture
def charlie_client(charlie: User) -> Client:
    return _client(charlie)


@pytest.fixture
def sim_account(sim_server, settings) -> Iterator[Account]:  # type: ignore[no-untyped-def]
    """The dashboard's only account, "sim", pointed at the live simulator over a real socket."""
    account = Account(name="sim", api_key=SIM_KEY, base_url=sim_server.url.removesuffix("/v1"))
    settings.UPSTREAM_ACCOUNTS = {"sim": account}
    settings.UPSTREAM_MAX_RETRIES = 0
    settings.UPSTREAM_READ_TIMEOUT = 5.0
    yield account
