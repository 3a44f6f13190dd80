"""The batch list: order, tabs, filters (and the ones it ignores), search, keyset pages, the
summary, a constant number of queries, and upstream text that stays text."""

from __future__ import annotations

import datetime as dt
import html
import re
import time

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches.filters import Cursor
from batches.models import Batch, SyncState
from batches.sync import store_batches
from tests.conftest import csrf_checked_client, signed_in_client
from tests.factories import batch_json

URL = reverse("batch_list")
NOW = int(time.time())
HOUR = 3600


@pytest.fixture(autouse=True)
def offline(offline_accounts):  # type: ignore[no-untyped-def]
    """Every test here runs against the two offline accounts (tests/conftest.py)."""


def listed_ids(page: str) -> list[str]:
    """Batch ids of the table rows, in page order."""
    return re.findall(r'<a class="mono" href="[^"]+" title="(batch_[^"]+)"', page)


def tab_counts(page: str) -> dict[str, int]:
    return {name.lower(): int(n) for name, n in re.findall(r'>(\w+) <span class="count">(\d+)</span>', page)}


def older_link(page: str) -> str | None:
    found = re.search(r'<a href="(\?[^"]*)"[^>]*>Older →</a>', page)
    return html.unescape(found.group(1)) if found else None


def get(client, **params):  # type: ignore[no-untyped-def]
    response = client.get(URL, params)
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
def test_lists_newest_first(bob_client):
    objs = [batch_json(created_at=NOW - i * HOUR) for i in (3, 1, 4, 2)]
    store_batches("sim", objs)

    ids = listed_ids(get(bob_client))

    by_age = sorted(objs, key=lambda o: -o["created_at"])
    assert ids == [o["id"] for o in by_age]


@pytest.mark.django_db
def test_status_tabs_count_each_family_and_respect_the_other_filters(bob_client):
    store_batches(
        "sim",
        [
            batch_json("validating"),
            batch_json("in_progress"),
            batch_json("finalizing", model="gpt-4.1"),
            batch_json("cancelling"),
            batch_json("completed"),
            batch_json("completed", model="gpt-4.1"),
            batch_json("failed"),
            batch_json("cancelled"),
            batch_json("expired", model="gpt-4.1"),
        ],
    )

    assert tab_counts(get(bob_client)) == {
        "active": 4,
        "completed": 2,
        "failed": 1,
        "cancelled": 1,
        "expired": 1,
        "all": 9,
    }
    filtered = get(bob_client, model="gpt-4.1", status="completed")
    assert tab_counts(filtered) == {
        "active": 1,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "expired": 1,
        "all": 3,
    }
    assert len(listed_ids(filtered)) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tab", "statuses"),
    [
        ("active", {"validating", "in_progress", "finalizing", "cancelling"}),
        ("completed", {"completed"}),
        ("failed", {"failed"}),
        ("cancelled", {"cancelled"}),
        ("expired", {"expired"}),
    ],
)
def test_status_tab_shows_only_its_statuses(bob_client, tab, statuses):
    all_statuses = [
        "validating",
        "in_progress",
        "finalizing",
        "cancelling",
        "completed",
        "failed",
        "cancelled",
        "expired",
    ]
    objs = {s: batch_json(s) for s in all_statuses}
    store_batches("sim", list(objs.values()))

    ids = set(listed_ids(get(bob_client, status=tab)))

    assert ids == {objs[s]["id"] for s in statuses}


@pytest.mark.django_db
def test_account_model_and_endpoint_filters(bob_client):
    a = batch_json(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    b = batch_json(model="o4-mini", endpoint="/v1/responses")
    c = batch_json(model="text-embedding-3-small", endpoint="/v1/embeddings")
    store_batches("sim", [a, b])
    store_batches("eu", [c])

    assert set(listed_ids(get(bob_client, account="eu"))) == {c["id"]}
    assert set(listed_ids(get(bob_client, account="sim"))) == {a["id"], b["id"]}
    assert set(listed_ids(get(bob_client, model="o4-mini"))) == {b["id"]}
    assert set(listed_ids(get(bob_client, endpoint="/v1/chat/completions"))) == {a["id"]}
    assert listed_ids(get(bob_client, model="gpt-4o-mini", endpoint="/v1/responses")) == []


@pytest.mark.django_db
def test_filter_menus_offer_the_models_and_endpoints_of_the_mirror(bob_client):
    store_batches("sim", [batch_json(model="o4-mini", endpoint="/v1/responses"), batch_json(model=None)])

    page = get(bob_client)

    assert '<option value="o4-mini">o4-mini</option>' in page
    assert '<option value="/v1/responses">/v1/responses</option>' in page
    assert '<option value="eu">eu</option>' in page


@pytest.mark.django_db
def test_created_date_filters_are_inclusive_days(bob_client):
    day = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    before = batch_json(created_at=int((day - dt.timedelta(seconds=1)).timestamp()))
    first = batch_json(created_at=int(day.timestamp()))
    last = batch_json(created_at=int((day + dt.timedelta(hours=23, minutes=59)).timestamp()))
    after = batch_json(created_at=int((day + dt.timedelta(days=1)).timestamp()))
    store_batches("sim", [before, first, last, after])

    same_day = set(listed_ids(get(bob_client, created_from="2026-03-10", created_to="2026-03-10")))
    from_day = set(listed_ids(get(bob_client, created_from="2026-03-10")))
    to_day = set(listed_ids(get(bob_client, created_to="2026-03-10")))

    assert same_day == {first["id"], last["id"]}
    assert from_day == {first["id"], last["id"], after["id"]}
    assert to_day == {before["id"], first["id"], last["id"]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("param", "value", "why"),
    [
        ("created_from", "2026-13-01", "not a date"),
        ("created_to", "yesterday", "not a date"),
        ("created_from", "20260101", "not a date"),
        ("status", "exploded", "not one of"),
        ("account", "nobody", "no such account"),
        ("q", "x" * 201, "longer than 200 characters"),
        ("before", "1767225600", "not a page cursor"),
        ("before", "99999999999999_1", "not a page cursor"),
        ("before", "1_99999999999999999999", "not a page cursor"),
        ("model", "m" * 201, "longer than 200 characters"),
    ],
)
def test_invalid_filter_is_ignored_with_a_visible_note(bob_client, param, value, why):
    objs = [batch_json("completed"), batch_json("in_progress")]
    store_batches("sim", objs)

    response = bob_client.get(URL, {param: value})

    assert response.status_code == 200
    page = response.content.decode()
    shown = value if len(value) <= 60 else value[:60] + "…"
    assert f"Ignored the filter {param}={shown}: {why}" in page
    assert set(listed_ids(page)) == {o["id"] for o in objs}
    # The dropped value is not carried into the links either.
    assert f"{param}={value}" not in html.unescape(re.sub(r"Ignored the filter [^<]*", "", page))


@pytest.mark.django_db
def test_valid_filters_survive_next_to_an_invalid_one(bob_client):
    a, b = batch_json(model="o4-mini"), batch_json(model="gpt-4.1")
    store_batches("sim", [a, b])

    page = get(bob_client, model="o4-mini", created_from="not-a-day")

    assert "Ignored the filter created_from=not-a-day" in page
    assert listed_ids(page) == [a["id"]]


@pytest.mark.django_db
def test_search_matches_id_exactly_by_prefix_and_by_short_id(bob_client):
    target = batch_json(id="batch_68a1f0c2d4e6")
    other = batch_json(id="batch_77ffee001122")
    store_batches("sim", [target, other])

    assert listed_ids(get(bob_client, q="batch_68a1f0c2d4e6")) == [target["id"]]
    assert listed_ids(get(bob_client, q="batch_68a1")) == [target["id"]]
    # The table shows ids without the prefix; pasting that finds the batch too.
    assert listed_ids(get(bob_client, q="68a1f0")) == [target["id"]]
    assert listed_ids(get(bob_client, q="batch_nothing")) == []


@pytest.mark.django_db
def test_search_matches_metadata_key_value_and_pair_case_insensitively(bob_client):
    tagged = batch_json(metadata={"Owner": "Maria.K", "project": "search-eval"})
    plain = batch_json(metadata={"owner": "sam.o"})
    store_batches("sim", [tagged, plain])

    assert listed_ids(get(bob_client, q="maria.k")) == [tagged["id"]]
    assert listed_ids(get(bob_client, q="PROJECT")) == [tagged["id"]]
    assert listed_ids(get(bob_client, q="project=search-eval")) == [tagged["id"]]
    assert listed_ids(get(bob_client, q="owner=sam.o")) == [plain["id"]]
    assert set(listed_ids(get(bob_client, q="owner"))) == {tagged["id"], plain["id"]}


@pytest.mark.django_db
def test_keyset_pages_visit_each_of_120_batches_exactly_once(bob_client):
    # Ties on created_at (ten per second) make the id the tie-breaker.
    objs = [batch_json(created_at=NOW - HOUR - i // 10) for i in range(120)]
    store_batches("sim", objs)

    seen: list[str] = []
    pages = 0
    query: str | None = ""
    while query is not None:
        page = bob_client.get(URL + query).content.decode()
        rows = listed_ids(page)
        assert len(rows) <= 50
        seen += rows
        pages += 1
        query = older_link(page)
        if query:
            assert "before=" in query
            assert "← Newest" in bob_client.get(URL + query).content.decode()
        assert pages < 10

    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    assert set(seen) == {o["id"] for o in objs}


@pytest.mark.django_db
def test_pages_keep_the_filters_in_the_older_link(bob_client):
    store_batches("sim", [batch_json("completed", model="o4-mini") for _ in range(60)])
    store_batches("sim", [batch_json("completed", model="gpt-4.1") for _ in range(5)])

    first = get(bob_client, model="o4-mini", status="completed")
    link = older_link(first)

    assert link is not None and "model=o4-mini" in link and "status=completed" in link
    second = bob_client.get(URL + link).content.decode()
    assert len(listed_ids(second)) == 10


def test_cursor_round_trips_with_sub_second_precision():
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=dt.UTC)
    cursor = Cursor(at, 42)

    assert str(cursor) == f"{int(at.replace(microsecond=0).timestamp())}.120000_42"
    assert Cursor.parse(str(cursor)) == cursor
    assert Cursor.parse(str(Cursor(at.replace(microsecond=0), 7))) == Cursor(at.replace(microsecond=0), 7)


@pytest.mark.django_db
def test_summary_adds_up_the_current_filter(bob_client):
    store_batches(
        "sim",
        [
            batch_json("completed", total=100, failed=4),  # 96 ok, 4 failed, 134,400 tokens
            batch_json("completed", total=10, usage=False),  # 10 ok, no usage
            batch_json("in_progress", total=100),  # 50 ok, 70,000 tokens
        ],
    )

    page = get(bob_client, status="completed")
    summary = page[page.index('class="summary"') : page.index("</section>", page.index('class="summary"'))]

    assert '<span class="big">2</span> batches' in summary
    assert '<span class="big">106</span> requests done' in summary
    assert '<span class="big error">4</span> failed' in summary
    assert "134,400 tokens" in summary
    whole = get(bob_client)
    assert "204,400 tokens" in whole


@pytest.mark.django_db
def test_query_count_does_not_grow_with_the_rows(bob_client, django_assert_num_queries):
    def fill(n: int) -> None:
        statuses = ["in_progress", "completed", "finalizing", "failed", "cancelling"]
        store_batches("sim", [batch_json(statuses[i % 5], metadata={"k": f"v{i}"}) for i in range(n)])

    fill(10)
    cache.clear()
    with CaptureQueriesContext(connection) as ten:
        assert len(listed_ids(get(bob_client))) == 10
    fill(90)
    cache.clear()
    with django_assert_num_queries(len(ten.captured_queries)) as hundred:
        assert len(listed_ids(get(bob_client))) == 50

    # The list never loads the raw upstream objects.
    for query in hundred.captured_queries:
        assert '"raw"' not in query["sql"]


@pytest.mark.django_db
def test_upstream_text_is_escaped_everywhere_on_the_list(bob_client):
    payload = "<script>alert(1)</script>"
    store_batches(
        "sim",
        [
            batch_json(
                model=f"{payload}model",
                metadata={
                    f"{payload}key": f"{payload}value",
                    "description": f'{payload}"><img src=x onerror=alert(2)>',
                },
            ),
            batch_json("failed", errors=[{"code": payload, "message": payload, "param": payload, "line": 1}]),
        ],
    )

    page = get(bob_client)
    searched = get(bob_client, q=payload)

    for body in (page, searched):
        assert "<script>alert" not in body
        assert "<img src=x" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;model" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in searched


@pytest.mark.django_db
def test_htmx_navigation_gets_only_the_results(bob_client):
    store_batches("sim", [batch_json()])

    response = bob_client.get(URL, {"status": "completed"}, headers={"HX-Request": "true"})

    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<div id="results">')
    assert "<html" not in body
    assert "HX-Request" in response["Vary"]
    restore = bob_client.get(URL, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.content.decode()


@pytest.mark.django_db
def test_rows_link_to_the_detail_page_and_show_the_essentials(bob_client):
    obj = batch_json("in_progress", total=200, failed=10, metadata={"description": "Backfill " + "x" * 80})
    store_batches("sim", [obj])

    page = get(bob_client)

    detail = reverse("batch_detail", args=["sim", obj["id"]])
    assert f'href="{detail}" title="{obj["id"]}"' in page
    assert '<span class="badge status-in_progress">in_progress</span>' in page
    assert "100/200" in page  # (completed + failed) / total
    assert 'class="bar-failed"' in page and 'width="5.00"' in page
    assert 'title="Backfill ' + "x" * 80 + '"' in page  # the full description in the tooltip
    assert "<time datetime=" in page and "1 h ago" in page


@pytest.mark.django_db
def test_stuck_batches_are_marked(bob_client, settings):
    store_batches("sim", [batch_json("in_progress")], now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))

    page = get(bob_client)

    assert f'title="no progress for more than {settings.STUCK_AFTER_MINUTES} minutes">stuck</span>' in page


# --- queries and the cache of the results -------------------------------------------------------


def synced(*accounts: str) -> None:
    """SyncState rows, as every sync makes them: what the list's cache is keyed on."""
    for account in accounts or ("sim", "eu"):
        SyncState.objects.update_or_create(
            account=account, defaults={"last_attempt_at": timezone.now(), "import_complete": True}
        )


def version(account: str = "sim") -> int:
    return SyncState.objects.get(account=account).mirror_version


def aggregates(queries: list[dict[str, str]]) -> list[str]:
    return [q["sql"] for q in queries if "GROUP BY" in q["sql"]]


def batch_queries(queries: list[dict[str, str]]) -> list[str]:
    return [q["sql"] for q in queries if 'FROM "batches_batch"' in q["sql"]]


@pytest.fixture
def cached_list(settings):  # type: ignore[no-untyped-def]
    settings.LIST_CACHE_SECONDS = 15
    settings.PRICES_CACHE_SECONDS = 60
    synced()


@pytest.mark.django_db
@pytest.mark.parametrize("client_name", ["bob_client", "alice_client"])
@pytest.mark.parametrize("params", [{}, {"status": "completed", "q": "owner"}])
def test_at_most_six_queries_and_as_many_at_10_as_at_1000_rows(
    request, settings, client_name, params, django_assert_max_num_queries, django_assert_num_queries
):
    client = request.getfixturevalue(client_name)
    settings.LIST_CACHE_SECONDS = 0  # every view renders: what a cache miss costs
    settings.PRICES_CACHE_SECONDS = 60
    synced()
    statuses = ["in_progress", "completed", "finalizing", "failed", "cancelling"]

    def fill(start: int, stop: int) -> None:
        objs = [
            batch_json(statuses[i % 5], created_at=NOW - i, metadata={"owner": f"team-{i % 7}"})
            for i in range(start, stop)
        ]
        store_batches("sim", objs[: len(objs) // 2])
        store_batches("eu", objs[len(objs) // 2 :])

    fill(0, 10)
    get(client, **params)  # the session, the filter menus and the price table are cached after one view
    with django_assert_max_num_queries(6) as ten:
        get(client, **params)
    at_ten = len(ten.captured_queries)  # read now: the queries log is a bounded deque
    fill(10, 1000)
    get(client, **params)
    with django_assert_num_queries(at_ten) as thousand:
        page = get(client, **params)

    assert len(listed_ids(page)) == 50
    # The tab counts, the summary, the cost and the operators' bulk count: one aggregate.
    assert len(aggregates(thousand.captured_queries)) == 1
    assert len(batch_queries(thousand.captured_queries)) == 2  # that aggregate and the rows
    assert sum("batches_syncstate" in q["sql"] for q in thousand.captured_queries) == 1


@pytest.mark.django_db
def test_a_cached_list_costs_no_rows_and_no_aggregate_until_the_mirror_changes(
    bob_client, cached_list, django_assert_max_num_queries
):
    first = batch_json("in_progress", metadata={"description": "first one"})
    store_batches("sim", [first])
    assert "first one" in get(bob_client)

    with django_assert_max_num_queries(4) as hit:
        assert "first one" in get(bob_client)
    assert not batch_queries(hit.captured_queries)

    # A write that bypasses store_batches bumps nothing: the cached results are served.
    Batch.objects.update(description="changed behind the cache's back")
    page = get(bob_client)
    assert "first one" in page and "50/100" in page

    # store_batches of a changed batch bumps the version: the next view renders again.
    store_batches("sim", [{**first, "request_counts": {"total": 100, "completed": 80, "failed": 0}}])
    page = get(bob_client)
    assert "80/100" in page and "50/100" not in page
    second = batch_json("completed", metadata={"description": "a new one"})
    store_batches("eu", [second])
    assert "a new one" in get(bob_client)


@pytest.mark.django_db
def test_the_cache_keeps_the_roles_apart(alice_client, bob_client, cached_list):
    store_batches("sim", [batch_json("in_progress"), batch_json("validating")])

    def operator_parts(page: str) -> list[str]:
        return [
            part
            for part in ("data-bulk-pick", "cancel-open", "Cancel all 2", "data-bulk-all")
            if part in page
        ]

    # Either role first: the other never gets its results.
    assert operator_parts(get(bob_client)) == []
    assert len(operator_parts(get(alice_client))) == 4
    assert operator_parts(get(bob_client)) == []
    cache.clear()
    assert len(operator_parts(get(alice_client))) == 4
    assert operator_parts(get(bob_client)) == []
    assert len(operator_parts(get(alice_client))) == 4


@pytest.mark.django_db
def test_the_cache_keeps_filters_and_their_notes_apart(bob_client, cached_list):
    done = batch_json("completed")
    failed = batch_json("failed")
    store_batches("sim", [done, failed])

    assert listed_ids(get(bob_client, status="completed")) == [done["id"]]
    assert listed_ids(get(bob_client, status="failed")) == [failed["id"]]
    assert listed_ids(get(bob_client, status="completed")) == [done["id"]]
    # The same valid filters, but what was ignored differs.
    assert "Ignored the filter" not in get(bob_client, status="failed")
    assert "Ignored the filter model=" in get(bob_client, status="failed", model="m" * 201)
    assert "Ignored the filter created_from=nope" in get(bob_client, status="failed", created_from="nope")


@pytest.mark.django_db
def test_nothing_of_the_user_is_inside_the_cached_results(alice_client, cached_list):
    store_batches("sim", [batch_json("in_progress")])

    page = get(alice_client)
    results = alice_client.get(URL, headers={"HX-Request": "true"}).content.decode()

    token = re.search(r'"X-CSRFToken": "([^"]+)"', page)
    assert token and token.group(1) not in results
    assert "csrfmiddlewaretoken" not in results
    assert "alice" not in results
    assert results.strip() in page  # the page carries the very same results


@pytest.mark.django_db
def test_a_cancel_claim_and_its_release_show_on_a_cached_list(bob_client, cached_list):
    from batches.cancel import _claim, _release

    store_batches("sim", [batch_json("in_progress")])
    batch = Batch.objects.get()
    assert "cancel requested by" not in get(bob_client)

    at = timezone.now()
    assert _claim(batch, "alice", at)
    assert "cancel requested by <strong>alice</strong>" in get(bob_client)

    _release(batch, "alice", at)
    assert "cancel requested by" not in get(bob_client)


@pytest.mark.django_db
def test_store_batches_bumps_the_mirror_version_only_when_a_row_changes():
    synced("sim")
    obj = batch_json("in_progress")

    store_batches("sim", [obj])
    assert version() == 1
    store_batches("sim", [obj])  # the same page again: nothing changed
    assert version() == 1
    store_batches("sim", [{**obj, "request_counts": {"total": 100, "completed": 60, "failed": 0}}])
    assert version() == 2
    store_batches("sim", [batch_json("completed")])  # a new batch
    assert version() == 3
    assert not SyncState.objects.filter(account="eu").exists()  # per account, and never made here
    store_batches("sim", [])
    assert version() == 3


# --- the cached page around the results (listing.page) -------------------------------------------


def own_parts(page: str) -> tuple[list[str], list[str]]:
    """The CSRF tokens and CSP nonces a page carries: each response's own."""
    return re.findall(r'(?:"X-CSRFToken": "|name="csrfmiddlewaretoken" value=")([^"]+)"', page), re.findall(
        r'nonce="([^"]+)"', page
    )


def without_own_parts(page: str) -> str:
    tokens, nonces = own_parts(page)
    for value in {*tokens, *nonces}:
        page = page.replace(value, "…")
    return page


@pytest.mark.django_db
def test_the_cached_page_is_the_page_rendered_in_full(alice_client, settings, cached_list):
    store_batches("sim", [batch_json("in_progress"), batch_json("failed")])
    SyncState.objects.filter(account="eu").update(
        last_error={"title": "Sync failed", "message": "<b>down</b>"}
    )
    settings.LIST_CACHE_SECONDS = 0
    full = get(alice_client, status="failed")
    settings.LIST_CACHE_SECONDS = 15
    get(alice_client, status="failed")  # renders the page around the results and keeps it
    cached = get(alice_client, status="failed")

    assert without_own_parts(cached) == without_own_parts(full)
    assert "alice · operator" in cached and "&lt;b&gt;down&lt;/b&gt;" in cached
    assert "batches-" not in cached  # no hole left unfilled


@pytest.mark.django_db
def test_each_response_has_its_own_csrf_token_and_nonce_the_csp_header_names(alice_client, cached_list):
    responses = [alice_client.get(URL) for _ in range(3)]
    seen_nonces = set()
    for response in responses:
        tokens, nonces = own_parts(response.content.decode())
        assert len(tokens) == 4 and len(set(tokens)) == 1  # hx-headers, logout, the two dialogs
        assert len(set(nonces)) == 1 and f"'nonce-{nonces[0]}'" in response["Content-Security-Policy"]
        seen_nonces.add(nonces[0])
    assert len(seen_nonces) == 3


@pytest.mark.django_db
def test_the_token_on_a_kept_page_passes_the_csrf_check(alice, cached_list):
    checked = csrf_checked_client(alice)
    checked.get(URL)  # the page is kept
    tokens, _ = own_parts(checked.get(URL).content.decode())
    # Logging out is a POST any signed-in user may make, with the token in htmx's header.
    assert checked.post(reverse("logout"), headers={"X-CSRFToken": "x" * 64}).status_code == 403
    assert checked.post(reverse("logout"), headers={"X-CSRFToken": tokens[0]}).status_code == 302


@pytest.mark.django_db
def test_the_kept_page_is_each_users_own(alice_client, bob_client, cached_list):
    from django.contrib.auth.models import Group, User

    dave = User.objects.create_user("dave", "dave@example.com", "dave-password-1")
    dave.groups.add(Group.objects.get(name="Viewers"))  # the same role as bob's
    dave_client = signed_in_client(dave)

    assert "bob · viewer" in get(bob_client)
    page = get(dave_client)
    assert "dave · viewer" in page and "bob" not in page
    page = get(alice_client)
    assert "alice · operator" in page and "bob" not in page
    assert "bob · viewer" in get(bob_client)


@pytest.mark.django_db
def test_a_role_given_shows_on_the_next_page(bob_client, bob, cached_list):
    from django.contrib.auth.models import Group

    assert "bob · viewer" in get(bob_client)
    bob.groups.add(Group.objects.get(name="Operators"))
    assert "bob · operator" in get(bob_client)


@pytest.mark.django_db
def test_messages_show_once_on_a_kept_page(bob_client, cached_list):
    from django.contrib.messages import constants
    from django.contrib.messages.storage.cookie import CookieStorage
    from django.http import HttpResponse
    from django.test import RequestFactory

    get(bob_client)  # the page is kept
    # A message waiting in the cookie, as a no-JavaScript cancel leaves one before its redirect.
    request = RequestFactory().get(URL)
    storage = CookieStorage(request)
    storage.add(constants.SUCCESS, "Cancel accepted: <done>.")
    response = HttpResponse()
    storage.update(response)
    bob_client.cookies["messages"] = response.cookies["messages"].value

    assert "Cancel accepted: &lt;done&gt;." in get(bob_client)
    assert "Cancel accepted" not in get(bob_client)


@pytest.mark.django_db
def test_the_banner_shows_a_failed_sync_at_the_next_view(bob_client, cached_list):
    assert "upstream down" not in get(bob_client)
    # Within the same second: the banner is kept per second only for the same states.
    SyncState.objects.filter(account="sim").update(
        last_error={"title": "Sync failed", "message": "upstream down"}
    )
    assert "upstream down" in get(bob_client)
