"""Live fragments: polling while a batch runs, 286 and no trigger once it ends; the freshness line
and the stale-mirror banner with the upstream's own words."""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import time

import pytest
from django.core.cache import cache
from django.template.loader import render_to_string
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone
from django.utils.html import strip_tags

from batches import sync
from batches.accounts import Account
from batches.models import POLL_FIELDS, POLL_VERSION_SECONDS, Batch, SyncState
from batches.sync import run_cycle, store_batches
from batches.views.monitor import live_context, row_context
from tests.factories import batch_json, offline_account

ACTIVE = ["validating", "in_progress", "finalizing", "cancelling"]
TERMINAL = ["completed", "failed", "expired", "cancelled"]


@pytest.fixture(autouse=True)
def offline(settings):  # type: ignore[no-untyped-def]
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    settings.POLL_INTERVAL = 7


def fragment_urls(obj: dict) -> list[str]:
    return [reverse(name, args=["sim", obj["id"]]) for name in ("batch_row", "batch_live")]


@pytest.mark.django_db
@pytest.mark.parametrize("status", ACTIVE)
def test_running_batches_keep_polling(bob_client, status):
    obj = batch_json(status)
    store_batches("sim", [obj])

    for url in fragment_urls(obj):
        response = bob_client.get(url, headers={"HX-Request": "true"})
        body = response.content.decode()
        assert response.status_code == 200
        assert f'hx-get="{url}" hx-trigger="every 7s" hx-swap="outerHTML" data-poll' in body
        assert "<html" not in body


@pytest.mark.django_db
@pytest.mark.parametrize("status", TERMINAL)
def test_ended_batches_stop_polling_with_286_and_no_trigger(bob_client, status):
    obj = batch_json(status)
    store_batches("sim", [obj])

    for url in fragment_urls(obj):
        response = bob_client.get(url, headers={"HX-Request": "true"})
        body = response.content.decode()
        assert response.status_code == 286
        assert "hx-trigger" not in body
        assert "data-poll" not in body
        assert f'<span class="badge status-{status}">{status}</span>' in body


@pytest.mark.django_db
def test_the_list_polls_only_the_rows_that_can_change(bob_client):
    running, done = batch_json("in_progress"), batch_json("completed")
    store_batches("sim", [running, done])
    rows = {b.batch_id: b.pk for b in Batch.objects.all()}

    page = bob_client.get(reverse("batch_list")).content.decode()

    assert f'<tr id="batch-row-{rows[running["id"]]}" hx-get=' in page
    assert f'<tr id="batch-row-{rows[done["id"]]}">' in page


@pytest.mark.django_db
def test_a_row_turns_terminal_between_two_polls(bob_client):
    obj = batch_json("in_progress")
    store_batches("sim", [obj])
    url = reverse("batch_row", args=["sim", obj["id"]])
    assert bob_client.get(url).status_code == 200

    store_batches("sim", [batch_json("completed", id=obj["id"], created_at=obj["created_at"])])
    response = bob_client.get(url)

    assert response.status_code == 286
    assert "hx-trigger" not in response.content.decode()
    assert "100/100" in response.content.decode()


@pytest.mark.django_db
def test_row_fragment_stays_small(alice_client):
    obj = batch_json("in_progress", metadata={"description": "Classify inbound tickets, weekly run 12"})
    store_batches("sim", [obj])

    response = alice_client.get(reverse("batch_row", args=["sim", obj["id"]]))

    assert "Cancel</button>" in response.content.decode()  # the operator's, the larger row
    assert len(response.content) <= 2048


@pytest.mark.django_db
def test_row_and_live_contexts_render_the_same_partials_for_other_views(bob):
    obj = batch_json("in_progress")
    store_batches("sim", [obj])
    batch = Batch.objects.get()
    request = RequestFactory().get("/")
    request.user = bob

    row = render_to_string("batches/list.html#row", row_context(request, batch), request)
    live = render_to_string("batches/detail.html#live", live_context(request, batch), request)

    assert row.lstrip().startswith(f'<tr id="batch-row-{batch.pk}"')
    assert live.lstrip().startswith('<section id="batch-live"')
    assert row_context(request, batch)["where"] == "row"
    assert live_context(request, batch)["where"] == "detail"


# --- freshness and the stale banner -------------------------------------------------------------


def text(page: str) -> str:
    """What a reader sees: tags gone, whitespace collapsed."""
    return " ".join(html.unescape(strip_tags(page)).split())


def failing_state(**overrides) -> SyncState:  # type: ignore[no-untyped-def]
    error = {
        "account": "sim",
        "kind": "auth",
        "status": 401,
        "title": "Authentication failed",
        "message": "Incorrect API key provided: sk-abc***xyz.",
        "request_id": "req_7f3a9c",
        "error_type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": None,
        "retry_after": None,
    }
    fields = {
        "account": "sim",
        "last_success_at": timezone.now() - dt.timedelta(minutes=20),
        "last_attempt_at": timezone.now(),
        "consecutive_failures": 3,
        "last_error": error,
        "last_error_at": timezone.now(),
        "import_complete": True,
    }
    fields.update(overrides)
    return SyncState.objects.create(**fields)


@pytest.mark.django_db
def test_stale_banner_says_why_and_keeps_the_last_good_data(bob_client):
    obj = batch_json("in_progress")
    store_batches("sim", [obj])
    failing_state()

    for url in (reverse("batch_list"), reverse("batch_detail", args=["sim", obj["id"]])):
        page = bob_client.get(url).content.decode()
        assert (
            "Authentication failed for account 'sim' (HTTP 401, request id req_7f3a9c): "
            "Incorrect API key provided: sk-abc***xyz. Showing data from"
        ) in text(page)
        assert "(20 min ago)" in text(page)
        assert obj["id"] in page


@pytest.mark.django_db
def test_stale_banner_escapes_the_upstream_message(bob_client):
    state = failing_state()
    state.last_error = {**state.last_error, "message": "<script>alert(1)</script>", "request_id": "<b>x</b>"}
    state.save()

    page = bob_client.get(reverse("batch_list")).content.decode()

    assert "<script>alert(1)" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.django_db
def test_shows_when_the_data_was_last_refreshed(bob_client):
    SyncState.objects.create(
        account="sim", last_success_at=timezone.now() - dt.timedelta(seconds=12), import_complete=True
    )

    page = bob_client.get(reverse("batch_list")).content.decode()

    assert "sim: updated <time" in page
    assert "12 s ago</time>" in page or "13 s ago</time>" in page
    assert "banner-error" not in page


@pytest.mark.django_db
def test_a_never_synced_account_says_so(bob_client):
    page = bob_client.get(reverse("batch_list")).content.decode()

    assert "sim: not synced yet" in page


@pytest.mark.django_db
def test_warning_and_import_progress_banners(bob_client):
    SyncState.objects.create(
        account="sim",
        last_success_at=timezone.now(),
        last_warning="The upstream sent an empty list page that claims more batches: "
        "the listing was cut short.",
        import_complete=False,
        imported=1234,
    )

    page = bob_client.get(reverse("batch_list")).content.decode()

    assert "the listing was cut short" in page
    assert "importing: 1,234 batches so far" in page


@pytest.mark.django_db
def test_a_real_authentication_failure_reaches_the_banner(bob_client, simulator, sim_server, settings):
    wrong = Account(name="sim", api_key="sk-wrong-key-abcdef123456", base_url=sim_server.url)
    settings.UPSTREAM_ACCOUNTS = {"sim": wrong}
    settings.UPSTREAM_MAX_RETRIES = 0

    result = run_cycle(wrong)
    page = bob_client.get(reverse("batch_list")).content.decode()

    assert result.error is not None and result.error.request_id
    assert (
        f"Authentication failed for account 'sim' (HTTP 401, request id {result.error.request_id}):"
        in text(page)
    )
    assert result.error.request_id in page
    assert "sk-wrong-key-abcdef123456" not in page


@pytest.mark.django_db(transaction=True)
def test_a_cancelling_row_shows_cancelled_at_the_first_poll_after_the_upstream_does(
    simulator, sim_clock, sim_account, settings, bob_client
):
    settings.SYNC_ON_DEMAND = True
    settings.REFRESH_INTERVAL = 3600  # only the cancelling batch's own refresh may run here
    sim_clock.freeze()
    created = simulator.create_batch(status="in_progress", total=100, in_progress_seconds=3600)
    simulator.cancel(created["id"])
    run_cycle(sim_account)
    url = reverse("batch_row", args=["sim", created["id"]])
    simulator.reset_stats()

    first = bob_client.get(url, HTTP_HX_REQUEST="true")
    second = bob_client.get(url, HTTP_HX_REQUEST="true")

    assert first.status_code == second.status_code == 200
    assert "cancelling" in second.content.decode()
    # However many polls within one interval: one retrieve.
    assert simulator.stats() == {"GET /batches/{id}": 1}

    sim_clock.advance(simulator.cancel_delay + 1)
    cache.clear()  # the next poll interval
    third = bob_client.get(url, HTTP_HX_REQUEST="true")

    assert third.status_code == 286
    assert 'data-status="cancelled"' in third.content.decode()
    assert "hx-trigger" not in third.content.decode()
    assert simulator.stats() == {"GET /batches/{id}": 2}


@pytest.fixture
def steady_clock(monkeypatch):  # type: ignore[no-untyped-def]
    """Poll versions carry a 30 s time bucket (POLL_VERSION_SECONDS): a test that reads a version
    and then polls with it must not cross into the next bucket in between."""
    now = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: now)


@pytest.mark.django_db
@pytest.mark.parametrize("status", ACTIVE)
def test_a_poll_that_already_shows_the_current_state_gets_204_and_no_body(bob_client, status, steady_clock):
    obj = batch_json(status, total=100, completed=10)
    store_batches("sim", [obj])
    version = Batch.objects.get(batch_id=obj["id"]).poll_version()

    for url in fragment_urls(obj):
        page = bob_client.get(url, headers={"HX-Request": "true"}).content.decode()
        assert f'hx-vals=\'{{"v": "{version}"}}\'' in page

        unchanged = bob_client.get(url, {"v": version}, headers={"HX-Request": "true"})
        assert unchanged.status_code == 204 and unchanged.content == b""

        stale = bob_client.get(url, {"v": "0000000000000000"}, headers={"HX-Request": "true"})
        assert stale.status_code == 200 and "data-poll" in stale.content.decode()


@pytest.mark.django_db
def test_progress_changes_the_poll_version_so_the_next_poll_renders(bob_client):
    obj = batch_json("in_progress", total=100, completed=10)
    store_batches("sim", [obj])
    before = Batch.objects.get(batch_id=obj["id"]).poll_version()

    store_batches("sim", [{**obj, "request_counts": {"total": 100, "completed": 20, "failed": 1}}])

    url = fragment_urls(obj)[0]
    response = bob_client.get(url, {"v": before}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    assert "21/100" in strip_tags(response.content.decode()).replace(" ", "")


HX = {"HX-Request": "true"}


@pytest.mark.django_db
def test_an_unchanged_poll_reads_only_what_its_version_is_made_of(
    bob_client, settings, django_assert_num_queries, steady_clock
):
    settings.SYNC_ON_DEMAND = True
    obj = batch_json("in_progress", total=100, completed=10, metadata={"owner": "ana"})
    store_batches("sim", [obj])
    SyncState.objects.update_or_create(account="sim", defaults={"last_attempt_at": timezone.now()})
    version = Batch.objects.get(batch_id=obj["id"]).poll_version()

    for url in fragment_urls(obj):
        bob_client.get(url, {"v": version}, headers=HX)  # reads the mirror's freshness, once
        # The batch's versioned fields only: no session, user or permissions (unchanged_poll),
        # no SyncState, no render.
        with django_assert_num_queries(1) as queries:
            assert bob_client.get(url, {"v": version}, headers=HX).status_code == 204
        batch_sql = queries.captured_queries[0]["sql"]
        assert "request_completed" in batch_sql
        assert "metadata" not in batch_sql and '"raw"' not in batch_sql


@pytest.fixture
def clock(monkeypatch):  # type: ignore[no-untyped-def]
    """timezone.now() held still, moved on by clock.advance(seconds)."""

    class Clock:
        now = timezone.now()

        def advance(self, seconds: float) -> None:
            self.now += dt.timedelta(seconds=seconds)

    held = Clock()
    monkeypatch.setattr(timezone, "now", lambda: held.now)
    return held


def _poll(client, url: str, version: str):  # type: ignore[no-untyped-def]
    return client.get(url, {"v": version}, headers=HX)


def _answer(response) -> int | str:  # type: ignore[no-untyped-def]
    """The status, or "login" when htmx is told to take the page to the sign-in."""
    return "login" if response.get("HX-Redirect", "").startswith(reverse("login")) else response.status_code


@pytest.mark.django_db
@pytest.mark.parametrize("change", ["signed out", "viewer role taken away"])
def test_someone_who_lost_access_learns_only_that_nothing_changed_and_only_until_the_version_ends(
    bob, bob_client, clock, change
):
    obj = batch_json("in_progress", total=100, completed=10)
    store_batches("sim", [obj])
    url = fragment_urls(obj)[1]
    page = bob_client.get(url, headers=HX).content.decode()
    version = Batch.objects.get(batch_id=obj["id"]).poll_version()
    assert f'"v": "{version}"' in page
    denied = "login" if change == "signed out" else 403
    if change == "signed out":
        bob_client.logout()
    else:
        bob.groups.clear()

    unchanged = _poll(bob_client, url, version)
    assert unchanged.status_code == 204 and unchanged.content == b""

    # A change is a render, which needs the sign-in and the role.
    store_batches("sim", [{**obj, "request_counts": {"total": 100, "completed": 11, "failed": 0}}])
    assert _answer(_poll(bob_client, url, version)) == denied
    # So does the same state once its version's time bucket has ended.
    version = Batch.objects.get(batch_id=obj["id"]).poll_version()
    assert _poll(bob_client, url, version).status_code == 204
    clock.advance(POLL_VERSION_SECONDS)
    assert _answer(_poll(bob_client, url, version)) == denied


@pytest.mark.django_db
def test_a_version_cannot_be_made_up_from_what_the_fragment_shows(bob_client, charlie_client, clock):
    obj = batch_json("in_progress", total=100, completed=10)
    twin = {**obj, "id": "batch_" + "9" * 24}
    store_batches("sim", [obj, twin])
    batch = Batch.objects.get(batch_id=obj["id"])
    url = fragment_urls(obj)[1]
    shown = (batch.account, batch.batch_id, *(getattr(batch, name) for name in POLL_FIELDS))
    bucket = int(timezone.now().timestamp() // POLL_VERSION_SECONDS)
    unkeyed = hashlib.blake2b(repr((*shown, bucket)).encode(), digest_size=8).hexdigest()
    with override_settings(SECRET_KEY="another server's key " * 3):
        other_key = batch.poll_version()
    twins = Batch.objects.get(batch_id=twin["id"]).poll_version()
    assert _poll(bob_client, url, batch.poll_version()).status_code == 204

    for forged in (unkeyed, other_key, twins):
        assert _answer(_poll(Client(), url, forged)) == "login"
        assert _poll(charlie_client, url, forged).status_code == 403
        assert _poll(bob_client, url, forged).status_code == 200  # rendered, with the real version


@pytest.mark.django_db
def test_a_malformed_version_is_not_looked_up_before_the_sign_in(django_assert_num_queries):
    obj = batch_json("in_progress")
    store_batches("sim", [obj])

    for version in ("", "0" * 15, "0" * 17, "ABCDEF0123456789", "<b>0123456789ab</b>"):
        with django_assert_num_queries(0):  # no session cookie, so no session to read either
            assert _answer(_poll(Client(), fragment_urls(obj)[1], version)) == "login"


@pytest.mark.django_db
def test_polls_of_a_cancelling_batch_always_go_through_the_sign_in(bob_client, clock):
    """They claim the batch's early refresh (sync.refresh_cancelling), which only a viewer may."""
    obj = batch_json("cancelling", total=100, completed=10)
    store_batches("sim", [obj])
    version = Batch.objects.get(batch_id=obj["id"]).poll_version()

    for url in fragment_urls(obj):
        assert _poll(bob_client, url, version).status_code == 204
        assert _answer(_poll(Client(), url, version)) == "login"


@pytest.mark.django_db
def test_a_fresh_mirror_is_read_again_only_once_it_may_have_gone_stale(settings, django_assert_num_queries):
    settings.SYNC_ON_DEMAND = True
    settings.REFRESH_INTERVAL = 2
    now = timezone.now()
    SyncState.objects.create(account="sim", last_attempt_at=now - dt.timedelta(seconds=1))

    with django_assert_num_queries(1):  # fresh for about a second more: read once
        assert sync._is_fresh("sim") and sync._is_fresh("sim")
    time.sleep(1.2)
    with django_assert_num_queries(1):
        assert not sync._is_fresh("sim")

    # Fresh only because a cycle runs: read every time, since that cycle may die.
    SyncState.objects.filter(account="sim").update(running_since=now)
    with django_assert_num_queries(2):
        assert sync._is_fresh("sim") and sync._is_fresh("sim")


@pytest.mark.django_db
def test_polls_start_no_refresh_while_the_sync_backs_off(settings, django_assert_num_queries):
    settings.SYNC_ON_DEMAND = True
    now = timezone.now()
    SyncState.objects.create(
        account="sim",
        last_attempt_at=now - dt.timedelta(minutes=10),  # long stale
        next_attempt_at=now + dt.timedelta(minutes=5),  # but failing: the next cycle is not due yet
        consecutive_failures=3,
    )
    account = offline_account()

    with django_assert_num_queries(1):  # read once, then known until the backoff ends
        assert sync.refresh_stale_in_background([account]) == []
        assert sync.refresh_stale_in_background([account]) == []


@pytest.mark.django_db
def test_lookup_loads_what_the_orm_loads():
    obj = batch_json("failed", total=10, completed=3, failed=7, metadata={"owner": "ana"})
    store_batches("sim", [obj])
    orm = Batch.objects.get(account="sim", batch_id=obj["id"])

    whole = Batch.objects.lookup("sim", obj["id"])
    assert whole is not None and whole.get_deferred_fields() == set()
    for field in Batch._meta.concrete_fields:
        assert getattr(whole, field.attname) == getattr(orm, field.attname), field.name
    assert whole.created_at.tzinfo is not None and whole.metadata == {"owner": "ana"}

    polled = Batch.objects.lookup("sim", obj["id"], only=("status", "request_failed"))
    assert polled is not None and (polled.pk, polled.status, polled.request_failed) == (orm.pk, "failed", 7)
    assert "raw" in polled.get_deferred_fields() and "status" not in polled.get_deferred_fields()
    assert "raw" in Batch.objects.lookup("sim", obj["id"], defer=("raw",)).get_deferred_fields()

    assert Batch.objects.lookup("eu", obj["id"]) is None
    assert Batch.objects.lookup("sim", "batch_not_mirrored") is None
