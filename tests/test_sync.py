"""The mirror against the live simulator: correctness, the minimum-request property, resumable
imports, coalescing across threads, and failures that keep the last good data."""

from __future__ import annotations

import math
import threading

import pytest
from django.db import connection
from django.utils import timezone

from batches.accounts import Account
from batches.models import TERMINAL_STATUSES, Batch, BatchSample, SyncState
from batches.simulator import Fault, SimClock
from batches.sync import run_cycle, sync_account

PAGE = 100


@pytest.fixture(autouse=True)
def frozen_clock(sim_clock):  # type: ignore[no-untyped-def]
    """Simulated time moves only when a test advances it, so a slow machine cannot race the asserts."""
    sim_clock.freeze()
    return sim_clock


def list_requests(simulator) -> int:  # type: ignore[no-untyped-def]
    return simulator.stats().get("GET /batches", 0)


def retrieve_requests(simulator) -> int:  # type: ignore[no-untyped-def]
    return simulator.stats().get("GET /batches/{id}", 0)


def assert_mirror_matches(simulator, account: Account) -> None:  # type: ignore[no-untyped-def]
    mirrored = dict(Batch.objects.filter(account=account.name).values_list("batch_id", "status"))
    upstream = {bid: simulator.get_batch(bid)["status"] for bid in simulator.batch_ids()}
    assert mirrored == upstream


def unreached_active(simulator, pages: int) -> int:  # type: ignore[no-untyped-def]
    """Mirrored non-terminal batches beyond the first `pages` list pages."""
    beyond = set(simulator.batch_ids()[pages * PAGE :])
    return Batch.objects.filter(batch_id__in=beyond).exclude(status__in=TERMINAL_STATUSES).count()


@pytest.mark.django_db
def test_first_import_mirrors_every_batch_with_one_request_per_page(simulator, sim_account):
    result = run_cycle(sim_account)

    assert result.ok
    assert result.new == 300
    assert list_requests(simulator) == math.ceil(300 / PAGE)
    assert retrieve_requests(simulator) == 0
    assert result.requests == simulator.total_requests()
    assert_mirror_matches(simulator, sim_account)
    state = SyncState.objects.get(account="sim")
    assert state.import_complete and state.imported == 300 and state.last_success_at is not None


@pytest.mark.django_db
def test_unchanged_account_costs_one_page_plus_the_active_batches_beyond_it(simulator, sim_account):
    run_cycle(sim_account)
    simulator.reset_stats()

    result = run_cycle(sim_account)

    pages = list_requests(simulator)
    assert result.ok and result.new == 0
    assert result.requests == simulator.total_requests() == pages + retrieve_requests(simulator)
    assert retrieve_requests(simulator) == unreached_active(simulator, pages)
    # Never more than the bound: ceil(new / page) + the active batches beyond page 1 + 1.
    assert result.requests <= 0 + unreached_active(simulator, 1) + 1


@pytest.mark.django_db
def test_new_batches_cost_only_the_pages_that_hold_them(simulator, sim_account):
    run_cycle(sim_account)
    for _ in range(5):
        simulator.create_batch(status="in_progress", total=50)
    simulator.reset_stats()

    result = run_cycle(sim_account)

    assert result.new == 5
    unreached = unreached_active(simulator, list_requests(simulator))
    assert result.requests <= math.ceil(5 / PAGE) + unreached + 1
    assert_mirror_matches(simulator, sim_account)


@pytest.mark.django_db
def test_more_new_batches_than_a_page_follow_the_cursor(simulator, sim_account):
    run_cycle(sim_account)
    for _ in range(150):
        simulator.create_batch(status="completed", total=10)
    simulator.reset_stats()

    result = run_cycle(sim_account)

    assert result.new == 150
    assert list_requests(simulator) >= 2
    unreached = unreached_active(simulator, list_requests(simulator))
    assert result.requests <= math.ceil(150 / PAGE) + unreached + 1
    assert Batch.objects.count() == 450
    assert_mirror_matches(simulator, sim_account)


@pytest.mark.django_db
@pytest.mark.parametrize("minutes", [1, 10, 60, 24 * 60])
def test_changed_and_finished_batches_are_refreshed(simulator, sim_clock, sim_account, minutes):
    run_cycle(sim_account)
    active_before = set(
        Batch.objects.exclude(status__in=TERMINAL_STATUSES).values_list("batch_id", flat=True)
    )
    assert active_before, "the seeded world has active batches"

    sim_clock.advance(minutes * 60)
    result = run_cycle(sim_account)

    assert result.ok
    assert_mirror_matches(simulator, sim_account)
    if minutes == 24 * 60:
        assert not Batch.objects.filter(batch_id__in=active_before).exclude(status__in=TERMINAL_STATUSES)


@pytest.mark.django_db
def test_progress_is_sampled_only_when_the_counts_move(simulator, sim_clock, sim_account):
    created = simulator.create_batch(status="in_progress", total=1000, in_progress_seconds=600)
    run_cycle(sim_account)
    batch = Batch.objects.get(batch_id=created["id"])
    run_cycle(sim_account)  # nothing moved
    assert BatchSample.objects.filter(batch=batch).count() == 1

    for _ in range(3):
        sim_clock.advance(60)
        run_cycle(sim_account)

    samples = list(BatchSample.objects.filter(batch=batch))
    assert len(samples) == 4
    assert [s.completed + s.failed for s in samples] == sorted(s.completed + s.failed for s in samples)
    assert samples[-1].completed + samples[-1].failed > samples[0].completed + samples[0].failed


@pytest.mark.django_db
def test_import_of_ten_thousand_batches_can_be_interrupted_and_resumed(make_sim_server, settings):
    clock = SimClock()
    clock.freeze()
    server = make_sim_server(batches=10_000, seed=3, clock=clock)
    simulator = server.simulator
    account = Account(name="big", api_key="sk-sim-local", base_url=server.url)
    settings.UPSTREAM_ACCOUNTS = {"big": account}
    calls = {"n": 0}

    def stop_after_30_pages() -> bool:
        calls["n"] += 1
        return calls["n"] > 30

    first = run_cycle(account, should_stop=stop_after_30_pages)

    assert first.interrupted
    state = SyncState.objects.get(account="big")
    assert not state.import_complete
    assert state.imported == Batch.objects.count() == 30 * PAGE
    assert state.last_success_at is None  # an interrupted import is progress, not success

    second = run_cycle(account)

    assert second.ok
    state.refresh_from_db()
    assert state.import_complete and state.imported == 10_000
    assert Batch.objects.filter(account="big").count() == 10_000
    # Resuming reads the 70 pages left and, at the top, only as many pages as save retrieves:
    # never more requests than one top page plus one retrieve per active batch beyond it.
    top_pages = second.list_pages - 70
    assert list_requests(simulator) == 100 + top_pages
    assert top_pages >= 1
    assert top_pages + second.retrieved <= 1 + unreached_active(simulator, 1)
    assert_mirror_matches(simulator, account)


@pytest.mark.django_db
def test_an_empty_page_claiming_more_is_reported_and_the_import_resumes(simulator, sim_account):
    simulator.add_fault(Fault(kind="empty_page", path="^/batches$", count=1))

    result = run_cycle(sim_account)

    assert "cut short" in " ".join(result.warnings)
    state = SyncState.objects.get(account="sim")
    assert "cut short" in state.last_warning
    assert not state.import_complete

    run_cycle(sim_account)
    state.refresh_from_db()
    assert state.import_complete and state.last_warning == ""
    assert Batch.objects.count() == 300


@pytest.mark.django_db
def test_upstream_failure_keeps_the_mirror_records_the_error_and_backs_off(simulator, sim_account):
    run_cycle(sim_account)
    simulator.add_fault(Fault(kind="status", status=503, path="^/batches"))

    assert sync_account(sim_account) is not None
    state = SyncState.objects.get(account="sim")
    assert state.consecutive_failures == 1
    assert state.last_error["kind"] == "server" and state.last_error["status"] == 503
    assert state.last_error["request_id"].startswith("req_")
    assert state.next_attempt_at > timezone.now()
    assert Batch.objects.count() == 300

    before = simulator.total_requests()
    assert sync_account(sim_account) is None  # backing off: no request at all
    assert simulator.total_requests() == before

    simulator.clear_faults()
    SyncState.objects.filter(account="sim").update(next_attempt_at=None)
    assert sync_account(sim_account).ok
    state.refresh_from_db()
    assert state.consecutive_failures == 0 and state.last_error is None


@pytest.mark.django_db
def test_a_rejected_key_is_reported_without_the_key(simulator, sim_server, settings):
    account = Account(name="sim", api_key="sk-wrong-key-0123456789", base_url=sim_server.url)
    settings.UPSTREAM_ACCOUNTS = {"sim": account}

    result = run_cycle(account)

    assert result.error is not None and result.error.kind == "auth"
    state = SyncState.objects.get(account="sim")
    assert "sk-wrong-key-0123456789" not in str(state.last_error)
    assert "'sim'" in state.last_error["text"]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_on_demand_refreshes_make_one_upstream_cycle(simulator, sim_account):
    SyncState.objects.create(account="sim")
    # Slow the upstream down so that both refreshes are certainly in flight together.
    simulator.add_fault(Fault(kind="latency", seconds=0.3, path="^/batches$"))
    results: list[object] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=10)

    def refresh() -> None:
        try:
            barrier.wait()
            results.append(sync_account(sim_account, only_if_stale=True))
        except BaseException as exc:  # reported below: a thread's exception would pass silently
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == [] and len(results) == 2
    ran = [r for r in results if r is not None]
    assert len(ran) == 1
    assert list_requests(simulator) == ran[0].list_pages  # type: ignore[attr-defined]
    # And right after, the mirror is fresh: a third viewer causes no refresh at all.
    assert sync_account(sim_account, only_if_stale=True) is None


@pytest.mark.django_db
def test_an_older_snapshot_never_moves_a_batch_out_of_its_final_status(django_capture_on_commit_callbacks):
    from batches.sync import batch_status_changed, store_batches
    from tests.factories import batch_json

    seen: list[tuple[str, str]] = []

    def record(sender: object, batch: Batch, old_status: str, **kwargs: object) -> None:
        seen.append((old_status, batch.status))

    running = batch_json("cancelling", id="batch_late0001")
    ended = {**running, "status": "cancelled", "cancelled_at": running["created_at"] + 60}
    batch_status_changed.connect(record)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            store_batches("sim", [running])
            store_batches("sim", [ended])
            store_batches("sim", [running])  # fetched before the cancel took effect, stored after
    finally:
        batch_status_changed.disconnect(record)

    assert Batch.objects.get(batch_id="batch_late0001").status == "cancelled"
    assert seen == [("cancelling", "cancelled")]
