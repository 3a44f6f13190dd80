"""batches.rows.RowLoader: instances equal to what the ORM loads, converters applied."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from batches.listing import read_states
from batches.models import SyncState
from batches.rows import RowLoader

pytestmark = pytest.mark.django_db


def _same_as_orm(loaded: SyncState) -> None:
    orm = SyncState.objects.get(pk=loaded.pk)
    for field in SyncState._meta.concrete_fields:
        assert getattr(loaded, field.attname) == getattr(orm, field.attname), field.name


def test_a_loader_without_key_reads_every_row_as_the_orm_would():
    now = timezone.now()
    error = {"kind": "rate_limited", "message": "Slow down <b>now</b>", "request_id": "req_1"}
    SyncState.objects.create(account="sim", last_attempt_at=now, last_error=error, mirror_version=7)
    SyncState.objects.create(account="eu", last_success_at=now - dt.timedelta(hours=1), import_complete=True)

    rows = {s.account: s for s in RowLoader(SyncState, ()).all()}

    assert set(rows) == {"sim", "eu"}
    for loaded in rows.values():
        _same_as_orm(loaded)
    assert rows["sim"].last_error == error  # JSON decoded, not a string
    assert rows["sim"].last_attempt_at.tzinfo is not None
    assert rows["eu"].import_complete is True


def test_a_keyed_loader_finds_one_row_or_none():
    SyncState.objects.create(account="sim", mirror_version=3)
    by_account = RowLoader(SyncState, ("account",), only=("mirror_version",))

    loaded = by_account.get("sim")
    assert loaded is not None and loaded.mirror_version == 3
    assert "last_error" in loaded.get_deferred_fields()
    assert by_account.get("nowhere") is None


def test_values_are_what_the_instance_would_hold_without_building_it():
    now = timezone.now()
    error = {"kind": "rate_limited", "message": "Slow down", "request_id": "req_1"}
    SyncState.objects.create(account="sim", last_attempt_at=now, last_error=error, mirror_version=7)
    by_account = RowLoader(SyncState, ("account",), only=("last_attempt_at", "last_error", "mirror_version"))

    values = by_account.values("sim")

    orm = SyncState.objects.get(account="sim")
    assert values == {
        "account": "sim",  # the primary key, always read
        "last_attempt_at": orm.last_attempt_at,
        "last_error": error,
        "mirror_version": 7,
    }
    assert values["last_attempt_at"].tzinfo is not None
    assert by_account.values("nowhere") is None


def test_read_states_keeps_only_the_accounts_asked_for():
    SyncState.objects.create(account="sim")
    SyncState.objects.create(account="old")  # an account no longer configured

    assert set(read_states(["sim", "eu"])) == {"sim"}
