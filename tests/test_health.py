"""`/healthz`: 200 while the database answers, with each account's sync age; 503 when it does not;
`?strict=1` also 503 when an account never synced or is older than HEALTHZ_MAX_SYNC_AGE."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches.accounts import Account
from batches.models import SyncState
from batches.sync import sync_account
from tests.conftest import SIM_KEY

URL = reverse("healthz")
STRICT = URL + "?strict=1"


def get(url: str) -> tuple[int, dict[str, Any], str]:
    response = Client().get(url)  # no login: load balancers and monitors are anonymous
    assert response["Content-Type"].startswith("application/json")
    assert "no-cache" in response["Cache-Control"]
    return response.status_code, response.json(), response.content.decode()


@pytest.mark.django_db
def test_healthz_answers_anonymously_with_each_accounts_sync_age(sim_account):
    status, body, _ = get(URL)
    assert status == 200
    assert body["ok"] is True and body["database"] == "ok"
    assert body["accounts"]["sim"]["last_success_age_seconds"] is None
    assert body["accounts"]["sim"]["stale"] is True

    assert sync_account(sim_account).ok
    status, body, _ = get(URL)

    assert status == 200
    age = body["accounts"]["sim"]["last_success_age_seconds"]
    assert age is not None and 0 <= age < 60
    assert body["accounts"]["sim"] == {
        "last_success_age_seconds": age,
        "stale": False,
        "failing": False,
        "error": None,
    }


@pytest.mark.django_db
def test_strict_is_503_until_every_account_has_synced(sim_account, settings):
    other = Account(name="other", api_key="sk-other-key-0123456789", base_url="http://127.0.0.1:9")
    settings.UPSTREAM_ACCOUNTS = {"sim": sim_account, "other": other}
    assert get(STRICT)[0] == 503

    assert sync_account(sim_account).ok
    status, body, _ = get(STRICT)
    assert status == 503 and body["ok"] is False
    assert body["accounts"]["sim"]["stale"] is False and body["accounts"]["other"]["stale"] is True

    SyncState.objects.update_or_create(account="other", defaults={"last_success_at": timezone.now()})
    status, body, _ = get(STRICT)
    assert status == 200 and body["ok"] is True


@pytest.mark.django_db
def test_strict_is_503_when_the_last_sync_is_older_than_the_limit(sim_account, settings):
    settings.HEALTHZ_MAX_SYNC_AGE = 600
    assert sync_account(sim_account).ok
    assert get(STRICT)[0] == 200

    SyncState.objects.filter(account="sim").update(last_success_at=timezone.now() - dt.timedelta(seconds=700))
    status, body, _ = get(STRICT)
    assert status == 503 and body["accounts"]["sim"]["stale"] is True
    assert get(URL)[0] == 200  # not strict: a stale upstream does not take the instance out

    assert sync_account(sim_account).ok  # a fresh sync
    assert get(STRICT)[0] == 200


@pytest.mark.django_db
def test_a_failing_account_is_named_without_its_key(simulator, sim_server, settings):
    wrong = Account(name="sim", api_key="sk-wrong-key-0123456789abcdef", base_url=sim_server.url)
    settings.UPSTREAM_ACCOUNTS = {"sim": wrong}
    assert sync_account(wrong).error is not None

    status, body, text = get(URL)

    assert status == 200
    assert body["accounts"]["sim"]["failing"] is True
    assert body["accounts"]["sim"]["error"] == "Authentication failed"
    for key in (wrong.api_key, SIM_KEY, "sk-wr"):
        assert key not in text


@pytest.mark.django_db
def test_503_when_the_database_is_unreachable(sim_account, monkeypatch):
    assert get(URL)[0] == 200

    def unreachable(self: BaseDatabaseWrapper, *args: Any, **kwargs: Any) -> Any:
        raise OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(BaseDatabaseWrapper, "cursor", unreachable)
    status, body, text = get(URL)

    assert status == 503
    assert body["ok"] is False and body["database"].startswith("unreachable")
    assert "Connection refused" not in text  # the driver's text (hosts, users) stays in the logs


@pytest.mark.django_db
def test_healthz_takes_only_get_and_head():
    assert Client().head(URL).status_code == 200
    assert Client().post(URL).status_code == 405
