"""Personal API tokens (shown once, stored hashed, revocable) and the read-only JSON API: who gets
in, the list page's filters (strict here), keyset pages, one batch, and a constant number of queries."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches import tokens
from batches.models import ApiToken, Batch, ModelPrice
from batches.sync import store_batches
from tests.conftest import csrf_checked_client
from tests.factories import batch_json

LIST = reverse("api_batch_list")
TOKENS = reverse("api_tokens")
NOW = int(time.time())
HOUR = 3600


@pytest.fixture(autouse=True)
def offline(offline_accounts):  # type: ignore[no-untyped-def]
    """Every test here runs against the two offline accounts (tests/conftest.py)."""


@pytest.fixture
def bob_token(bob: User) -> str:
    return tokens.issue(bob, "script")[1]


def api(path: str, token: str | None, **params: Any) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return Client().get(path, params, **headers)


def detail_url(account: str, batch_id: str) -> str:
    return reverse("api_batch_detail", args=[account, batch_id])


def error_of(response: Any, status: int, type: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == type
    assert error["message"]
    return error


def new_token_on(page: str) -> str:
    found = re.findall(r"bdt_[A-Za-z0-9_-]{40}", page)
    assert len(found) == 1, found
    return found[0]


# --- tokens: the page -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_new_token_is_shown_once_and_only_its_hash_is_stored(bob, bob_client):
    created = bob_client.post(TOKENS, {"name": "nightly report"})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    token = new_token_on(created.content.decode())

    row = ApiToken.objects.get()
    assert (row.user, row.name, row.prefix) == (bob, "nightly report", token[:8])
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()

    # Not on the next view of the page: only the prefix, for recognising it.
    again = bob_client.get(TOKENS).content.decode()
    assert token not in again
    assert f"{token[:8]}…" in again
    assert "nightly report" in again

    # Nowhere in the database: not in the token table, not in a session, not anywhere.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')
            assert token not in repr(cursor.fetchall()), table

    # And it works.
    assert api(LIST, token).status_code == 200


@pytest.mark.django_db
def test_the_page_lists_only_ones_own_tokens_with_their_use(alice, bob, bob_client):
    tokens.issue(alice, "alice's")
    mine, token = tokens.issue(bob, "bob's")
    page = bob_client.get(TOKENS).content.decode()
    assert "bob&#x27;s" in page and "alice" not in page.split("<main>")[1]
    assert "never" in page

    api(LIST, token)
    mine.refresh_from_db()
    assert mine.last_used_at is not None
    assert mine.last_used_at.strftime("%Y-%m-%d %H:%M") in bob_client.get(TOKENS).content.decode()


@pytest.mark.django_db
def test_revoking_a_token_stops_it_at_once(bob, bob_client):
    row, token = tokens.issue(bob, "old")
    assert api(LIST, token).status_code == 200

    response = bob_client.post(reverse("api_token_revoke", args=[row.pk]), follow=True)

    assert response.redirect_chain[-1][0] == TOKENS
    assert "revoked" in response.content.decode()
    row.refresh_from_db()
    assert row.revoked_at is not None
    error = error_of(api(LIST, token), 401, "authentication_error")
    assert "revoked" in error["message"]


@pytest.mark.django_db
def test_nobody_revokes_someone_elses_token(alice, alice_client, bob):
    row, _ = tokens.issue(bob, "bob's")
    assert alice_client.post(reverse("api_token_revoke", args=[row.pk])).status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None


@pytest.mark.django_db
def test_token_page_needs_a_login_a_role_and_csrf(client, charlie_client, bob):
    assert client.get(TOKENS).status_code == 302
    assert charlie_client.get(TOKENS).status_code == 403
    assert charlie_client.post(TOKENS, {"name": "x"}).status_code == 403
    strict = csrf_checked_client(bob)
    assert strict.post(TOKENS, {"name": "x"}).status_code == 403
    row, _ = tokens.issue(bob, "x")
    assert strict.post(reverse("api_token_revoke", args=[row.pk])).status_code == 403
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 1
    # Revoking is a POST only.
    plain = Client()
    plain.force_login(bob)
    assert plain.get(reverse("api_token_revoke", args=[row.pk])).status_code == 405


@pytest.mark.django_db
def test_a_token_needs_a_name(bob_client):
    response = bob_client.post(TOKENS, {"name": "  "})
    assert response.status_code == 400
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_the_user_menu_links_the_token_page(bob_client):
    assert f'href="{TOKENS}"' in bob_client.get(reverse("batch_list")).content.decode()
    assert f'href="{TOKENS}" aria-current="page"' in bob_client.get(TOKENS).content.decode()


@pytest.mark.django_db
def test_staff_see_and_revoke_tokens_in_the_admin(bob):
    row, token = tokens.issue(bob, "leaked")
    root = User.objects.create_superuser("root", "root@example.com", "root-password-1")
    staff = Client()
    staff.force_login(root)
    listing = staff.get(reverse("admin:batches_apitoken_changelist")).content.decode()
    assert row.prefix in listing and token not in listing
    assert staff.get(reverse("admin:batches_apitoken_add")).status_code == 403

    staff.post(
        reverse("admin:batches_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [row.pk]},
    )

    row.refresh_from_db()
    assert row.revoked_at is not None
    assert api(LIST, token).status_code == 401


@pytest.mark.django_db
def test_tokens_look_like_bdt_and_40_urlsafe_characters(bob):
    plaintexts = {tokens.issue(bob, f"t{i}")[1] for i in range(5)}
    assert len(plaintexts) == 5
    assert all(re.fullmatch(r"bdt_[A-Za-z0-9_-]{40}", t) for t in plaintexts)
    assert all(tokens.TOKEN_RE.fullmatch(t) for t in plaintexts)


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_a_minute(bob, django_assert_num_queries):
    row, token = tokens.issue(bob, "busy")
    api(LIST, token)
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None

    api(LIST, token)
    row.refresh_from_db()
    assert row.last_used_at == first

    ApiToken.objects.filter(pk=row.pk).update(last_used_at=first - dt.timedelta(seconds=61))
    api(LIST, token)
    row.refresh_from_db()
    assert row.last_used_at > first


# --- the API: who gets in ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic Ym9iOmJvYg==",
        "Token bdt_" + "a" * 40,
        "Bearer bdt_" + "a" * 40,  # well-formed but unknown
        "Bearer not-a-token",
        "Bearer bdt_" + "a" * 400,
    ],
)
def test_no_valid_token_is_a_401(bob_token, header):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    for path in (LIST, detail_url("sim", "batch_abc")):
        response = Client().get(path, **extra)
        error_of(response, 401, "authentication_error")
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_a_session_is_not_enough(bob_client):
    error_of(bob_client.get(LIST), 401, "authentication_error")


@pytest.mark.django_db
def test_the_token_of_a_user_without_a_role_is_a_403(charlie):
    _, token = tokens.issue(charlie, "x")
    error_of(api(LIST, token), 403, "permission_error")
    error_of(api(detail_url("sim", "batch_abc"), token), 403, "permission_error")


@pytest.mark.django_db
def test_viewer_and_operator_tokens_read(bob_token, alice):
    store_batches("sim", [batch_json()])
    assert api(LIST, bob_token).status_code == 200
    assert api(LIST, tokens.issue(alice, "x")[1]).status_code == 200


@pytest.mark.django_db
def test_an_inactive_users_token_is_a_401(bob, bob_token):
    bob.is_active = False
    bob.save()
    error_of(api(LIST, bob_token), 401, "authentication_error")


@pytest.mark.django_db
def test_the_api_only_reads(bob_token):
    client = Client(enforce_csrf_checks=True)
    for method in (client.post, client.put, client.delete, client.patch):
        response = method(LIST, HTTP_AUTHORIZATION=f"Bearer {bob_token}")
        error_of(response, 405, "invalid_request_error")


@pytest.mark.django_db
def test_answers_are_private_to_the_token(bob_token):
    response = api(LIST, bob_token)
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]
    assert "Authorization" in response["Vary"]


# --- the list -------------------------------------------------------------------------------------


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["data"]]


@pytest.mark.django_db
def test_items_are_the_upstream_object_plus_a_dashboard_block(bob_token, settings):
    ModelPrice.objects.create(
        model="gpt-4o-mini",
        input=Decimal("0.15"),
        cached_input=Decimal("0.075"),
        output=Decimal("0.6"),
        effective_date=dt.date(2026, 11, 1),
    )
    obj = batch_json("completed", metadata={"team": "search"})
    stuck = batch_json("in_progress", model="unpriced")
    store_batches("sim", [obj, stuck])
    Batch.objects.filter(batch_id=stuck["id"]).update(progressed_at=timezone.now() - dt.timedelta(hours=2))

    data = {item["id"]: item for item in api(LIST, bob_token).json()["data"]}

    item = data[obj["id"]]
    dashboard = item.pop("dashboard")
    assert item == obj
    assert dashboard["account"] == "sim"
    assert dashboard["url"] == reverse("batch_detail", args=["sim", obj["id"]])
    assert dashboard["stuck_reason"] is None
    for name in ("first_seen_at", "synced_at"):
        assert dt.datetime.fromisoformat(dashboard[name]) <= timezone.now()
    # 100 requests of the factory: 100k input (25k cached), 40k output: $0.037125, halved.
    assert dashboard["cost_estimate"] == {
        "usd": "0.018563",
        "prices_effective_date": "2026-11-01",
        "batch_discount_percent": "50",
    }
    other = data[stuck["id"]]["dashboard"]
    assert other["stuck_reason"] == f"no progress for more than {settings.STUCK_AFTER_MINUTES} minutes"
    assert other["cost_estimate"] is None


@pytest.mark.django_db
def test_list_takes_the_list_pages_filters(bob_token):
    day = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)
    a = batch_json(
        "completed", model="gpt-4.1", created_at=int(day.timestamp()), metadata={"team": "ranking"}
    )
    b = batch_json("in_progress", endpoint="/v1/embeddings", created_at=int(day.timestamp()) - 86400)
    c = batch_json("failed", created_at=int(day.timestamp()) - 2 * 86400)
    store_batches("sim", [a, b])
    store_batches("eu", [c])

    assert ids(api(LIST, bob_token)) == [a["id"], b["id"], c["id"]]
    assert ids(api(LIST, bob_token, status="active")) == [b["id"]]
    assert ids(api(LIST, bob_token, status="all")) == [a["id"], b["id"], c["id"]]
    assert ids(api(LIST, bob_token, account="eu")) == [c["id"]]
    assert ids(api(LIST, bob_token, model="gpt-4.1")) == [a["id"]]
    assert ids(api(LIST, bob_token, endpoint="/v1/embeddings")) == [b["id"]]
    assert ids(api(LIST, bob_token, created_from="2026-03-09")) == [a["id"], b["id"]]
    assert ids(api(LIST, bob_token, created_to="2026-03-09")) == [b["id"], c["id"]]
    assert ids(api(LIST, bob_token, q="team=ranking")) == [a["id"]]
    assert ids(api(LIST, bob_token, q=c["id"][:12])) == [c["id"]]
    assert ids(api(LIST, bob_token, status="completed", account="eu")) == []
    # Blank values are no filter, as on the page.
    assert len(ids(api(LIST, bob_token, model="", status=""))) == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("param", "value", "why"),
    [
        ("status", "running", "not one of"),
        ("account", "nope", "no such account"),
        ("model", "m" * 201, "longer than 200"),
        ("endpoint", "/" * 101, "longer than 100"),
        ("created_from", "yesterday", "not a date"),
        ("created_from", "2026-02-30", "not a date"),
        ("created_to", "20260101", "not a date"),
        ("q", "x" * 201, "longer than 200"),
        ("limit", "0", "1 to 100"),
        ("limit", "101", "1 to 100"),
        ("limit", "ten", "1 to 100"),
        ("limit", "-5", "1 to 100"),
        ("after", "yesterday", "cursor"),
        ("after", "99999999999999_1", "cursor"),
    ],
)
def test_an_invalid_parameter_is_a_400_naming_it(bob_token, param, value, why):
    error = error_of(api(LIST, bob_token, **{param: value}), 400, "invalid_request_error")
    assert error["param"] == param
    assert error["message"].startswith(f"{param}: ")
    assert why in error["message"]


@pytest.mark.django_db
def test_a_date_range_backwards_is_a_400_on_created_to(bob_token):
    error = error_of(
        api(LIST, bob_token, created_from="2026-03-10", created_to="2026-03-01"), 400, "invalid_request_error"
    )
    assert error == {
        "message": "created_to: before created_from",
        "type": "invalid_request_error",
        "param": "created_to",
    }


@pytest.mark.django_db
def test_keyset_pages_visit_each_of_120_batches_once(bob_token):
    # Pairs share a created_at: the cursor's primary key keeps them apart.
    objs = [batch_json(created_at=NOW - (i // 2) * HOUR) for i in range(120)]
    store_batches("sim", objs)

    seen: list[str] = []
    pages = 0
    url: str | None = LIST + "?limit=50"
    while url:
        parts = urlsplit(url)
        response = Client().get(f"{parts.path}?{parts.query}", HTTP_AUTHORIZATION=f"Bearer {bob_token}")
        body = response.json()
        seen += [item["id"] for item in body["data"]]
        pages += 1
        assert body["has_more"] == (body["next"] is not None)
        assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][-1]["id"]
        url = body["next"]
        if url:
            assert url.startswith("http://testserver/api/v1/batches?")

    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    expected = [b.batch_id for b in Batch.objects.order_by("-created_at", "-id")]
    assert seen == expected

    # The default page is 50; the filters ride along in `next`.
    first = api(LIST, bob_token, model="gpt-4o-mini", limit="7").json()
    assert len(first["data"]) == 7
    assert "model=gpt-4o-mini" in first["next"] and "limit=7" in first["next"]
    assert len(api(LIST, bob_token).json()["data"]) == 50


@pytest.mark.django_db
def test_an_empty_list(bob_token):
    body = api(LIST, bob_token).json()
    assert body == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
        "next": None,
    }


@pytest.mark.django_db
def test_query_count_does_not_grow_with_the_rows(bob_token, django_assert_num_queries):
    ModelPrice.objects.create(
        model="gpt-4o-mini", input=1, cached_input=1, output=1, effective_date=dt.date(2026, 1, 1)
    )
    store_batches("sim", [batch_json(model=m) for m in ("gpt-4o-mini", "x")])
    api(LIST, bob_token)  # last_used_at is written now, not in the measured requests
    with CaptureQueriesContext(connection) as few:
        assert len(ids(api(LIST, bob_token))) == 2
    store_batches(
        "sim",
        [
            batch_json(status, model=m)
            for status in ("completed", "in_progress", "failed")
            for m in ("gpt-4o-mini", "x")
            for _ in range(15)
        ],
    )
    with django_assert_num_queries(len(few.captured_queries)):
        assert len(ids(api(LIST, bob_token, limit="100"))) == 92


# --- one batch ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_returns_one_batch(bob_token):
    obj = batch_json("failed")
    store_batches("eu", [obj])

    body = api(detail_url("eu", obj["id"]), bob_token).json()

    dashboard = body.pop("dashboard")
    assert body == obj
    assert dashboard["account"] == "eu"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("account", "batch_id"),
    [
        ("sim", "batch_unknown123"),  # well-formed, not in the mirror
        ("nope", "batch_abc"),  # no such account
        ("sim", "batch_x%2F.."),  # malformed
        ("sim", "b\u0430tch_abc"),  # Cyrillic a
        ("sim", "batch_" + "a" * 200),
    ],
)
def test_unknown_or_malformed_ids_are_a_json_404_without_the_upstream(bob_token, account, batch_id):
    obj = batch_json()
    store_batches("eu", [obj])
    # The accounts are offline (port 9): anything sent upstream would be a 502, not a 404.
    error_of(api(f"/api/v1/batches/{account}/{batch_id}", bob_token), 404, "not_found_error")
    # A batch of another account is not found under this one.
    error_of(api(detail_url("sim", obj["id"]), bob_token), 404, "not_found_error")


@pytest.mark.django_db
def test_detail_costs_a_constant_number_of_queries(bob_token, django_assert_num_queries):
    with_usage, without = batch_json("completed"), batch_json("failed", model=None)
    store_batches("sim", [with_usage, without])
    api(LIST, bob_token)
    with CaptureQueriesContext(connection) as one:
        assert api(detail_url("sim", with_usage["id"]), bob_token).status_code == 200
    with django_assert_num_queries(len(one.captured_queries)):
        assert api(detail_url("sim", without["id"]), bob_token).status_code == 200
