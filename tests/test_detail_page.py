"""One batch's page: every field (and every absent one), files, console link, raw JSON, rate, ETA and
chart from the samples, constant queries, and 404s that never reach the upstream."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import pytest
import responses
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches import progress
from batches.accounts import Account
from batches.models import Batch, BatchSample
from batches.progress import Point
from batches.sync import store_batches
from tests.factories import batch_json, offline_account

NOW = int(time.time())


@pytest.fixture(autouse=True)
def offline(settings):  # type: ignore[no-untyped-def]
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}


def detail(client, obj, account="sim"):  # type: ignore[no-untyped-def]
    response = client.get(reverse("batch_detail", args=[account, obj["id"]]))
    assert response.status_code == 200
    return response.content.decode()


def live_part(page: str) -> str:
    start = page.index('<section id="batch-live"')
    return page[start : page.index("</section>", start)]


@pytest.mark.django_db
def test_shows_every_field_of_a_completed_batch(bob_client):
    obj = batch_json(
        "completed", total=100, failed=4, metadata={"description": "Nightly eval", "owner": "li.wei"}
    )
    store_batches("sim", [obj])

    page = detail(bob_client, obj)

    for text in (
        obj["id"],
        '<td class="mono">batch</td>',
        "/v1/chat/completions",
        "gpt-4o-mini",
        "24h",
        obj["input_file_id"],
        obj["output_file_id"],
        obj["error_file_id"],
        '<span class="badge status-completed">completed</span>',
        "100 total · 96 completed",
        "4 failed",
        "96,000",
        "24,000",
        "25.0% of input",
        "38,400",
        "9,600",
        "134,400",
        '<td class="mono">owner</td><td>li.wei</td>',
    ):
        assert text in page, text
    for name in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at"):
        at = dt.datetime.fromtimestamp(obj[name], tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert f"<th>{name}</th><td>{at}</td>" in page
    for name in ("failed_at", "expired_at", "cancelling_at", "cancelled_at"):
        assert f"<th>{name}</th><td>—</td>" in page


@pytest.mark.django_db
def test_timeline_shows_steps_in_order_with_durations_between(bob_client):
    obj = batch_json("completed")  # in progress after 1 min, finalizing after 29 more, done 3 min later
    store_batches("sim", [obj])

    rows = re.findall(
        r"<tr><td>([a-z ]+)</td>.*?<td class=\"num\">([^<]*)</td></tr>", detail(bob_client, obj)
    )

    assert rows == [
        ("created", ""),
        ("in progress", "+1 min"),
        ("finalizing", "+29 min"),
        ("completed", "+3 min"),
    ]


def test_timeline_durations_follow_the_times_not_the_usual_order():
    start = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    minute = dt.timedelta(minutes=1)
    # A cancel requested before the batch went in progress: not the usual order of the fields.
    batch = Batch(created_at=start, cancelling_at=start + 5 * minute, in_progress_at=start + 10 * minute)

    steps = [(s["name"], s["after"]) for s in batch.timeline()]

    assert steps == [("created", None), ("cancelling", 5 * minute), ("in progress", 5 * minute)]


@pytest.mark.parametrize(
    ("minutes", "basis", "per_minute"),
    [
        ((0, 20), "last 15 min", 10.0),  # the first sample lies before the window: a full window
        ((0, 5, 20), "last 15 min", 10.0),  # measured from the newest sample at the window's start
        ((0, 10), "since the first sample", 10.0),  # a shorter history than the window
    ],
)
def test_the_rate_says_what_it_was_measured_over(minutes, basis, per_minute):
    start = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    points = [Point(start + dt.timedelta(minutes=m), completed=10 * m, failed=0) for m in minutes]
    batch = Batch(status="in_progress", request_total=10_000, request_completed=points[-1].completed)

    estimate = progress.estimate(batch, points, now=points[-1].at)

    assert (estimate.basis, estimate.rate_per_minute) == (basis, per_minute)


@pytest.mark.django_db
def test_absent_fields_say_so(bob_client):
    errors = [
        {"code": f"invalid_{i}", "message": f"Line {i + 1} is not valid JSON.", "param": None, "line": i + 1}
        for i in range(30)
    ]
    obj = batch_json("failed", model=None, metadata=None, usage=False, errors=errors, expires_at=None)
    obj["request_counts"] = None
    obj["metadata"] = None
    store_batches("sim", [obj])

    page = detail(bob_client, obj)

    assert "Usage not reported" in page
    assert '<p class="muted metadata-none">none</p>' in page
    assert "<tr><th>model</th><td>—</td></tr>" in page
    assert '<tr><th>output_file_id</th><td class="mono">—</td></tr>' in page
    assert '<span class="muted">not reported</span>' in page  # request_counts
    assert "<th>in_progress_at</th><td>—</td>" in page
    assert "<th>expires_at</th><td>—</td>" in page
    assert 'Errors <span class="muted">(30)</span>' in page
    assert page.count('<td class="mono">invalid_') == 30
    assert "Line 30 is not valid JSON." in page
    assert "Download" not in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "label"),
    [
        ("completed", "Download output"),
        ("cancelled", "Download partial results"),
        ("expired", "Download partial results"),
    ],
)
def test_links_the_output_and_error_files(bob_client, status, label):
    obj = batch_json(status, failed=3)
    store_batches("sim", [obj])

    page = detail(bob_client, obj)

    output = reverse("file_download", args=["sim", obj["id"], obj["output_file_id"]])
    errors = reverse("file_download", args=["sim", obj["id"], obj["error_file_id"]])
    assert f'<a href="{output}" download>{label}</a>' in page
    assert f'<a href="{errors}" download>Download errors</a>' in page


@pytest.mark.django_db
def test_links_the_provider_console_when_the_account_has_one(bob_client, settings):
    obj = batch_json()
    store_batches("sim", [obj])
    assert "provider console" not in detail(bob_client, obj)

    settings.UPSTREAM_ACCOUNTS = {
        "sim": Account(
            name="sim",
            api_key="sk-test",
            base_url="http://127.0.0.1:9",
            console_url="https://console.example.com/batches",
        )
    }
    page = detail(bob_client, obj)

    assert f'href="https://console.example.com/batches/{obj["id"]}"' in page


@pytest.mark.django_db
def test_raw_json_and_metadata_are_escaped(bob_client):
    payload = "<script>alert('x')</script>"
    obj = batch_json(
        "failed",
        metadata={payload: payload, "description": payload},
        model=payload,
        errors=[{"code": payload, "message": payload, "param": payload, "line": 3}],
    )
    store_batches("sim", [obj])

    page = detail(bob_client, obj)

    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    raw = page[page.index("<pre>") : page.index("</pre>")]
    assert "&quot;id&quot;: &quot;" + obj["id"] in raw
    assert "&lt;script&gt;" in raw


@pytest.mark.django_db
def test_no_inline_style_or_script_on_the_page(bob_client):
    obj = batch_json("in_progress")
    store_batches("sim", [obj])
    batch = Batch.objects.get()
    add_samples(batch, [(30, 10, 0), (20, 30, 1), (10, 45, 2)])

    page = detail(bob_client, obj)

    assert "style=" not in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert '<polyline class="chart-completed"' in page


def add_samples(batch: Batch, rows: list[tuple[int, int, int]]) -> None:
    """(minutes ago, completed, failed) samples for the batch."""
    now = timezone.now()
    BatchSample.objects.bulk_create(
        BatchSample(
            batch=batch,
            at=now - dt.timedelta(minutes=m),
            completed=c,
            failed=f,
            total=batch.request_total or 0,
        )
        for m, c, f in rows
    )


@pytest.mark.django_db
def test_rate_and_eta_come_from_the_recent_samples(bob_client):
    obj = batch_json("in_progress", total=1000, completed=300, failed=0)
    store_batches("sim", [obj])
    batch = Batch.objects.get()
    # 200 requests in the last 20 minutes, 100 of them in the last 10: 10 requests/min lately.
    add_samples(batch, [(40, 0, 0), (20, 100, 0), (10, 200, 0)])
    Batch.objects.filter(pk=batch.pk).update(progressed_at=timezone.now(), synced_at=timezone.now())
    batch.refresh_from_db()

    points = progress.load_points(batch)
    estimate = progress.estimate(batch, points)

    assert estimate.rate_per_minute == pytest.approx(200 / 20, rel=0.02)  # from 20 min ago, the window's base
    assert estimate.eta == pytest.approx(dt.timedelta(minutes=70), abs=dt.timedelta(minutes=2))
    page = live_part(detail(bob_client, obj))
    assert "10.0 requests/min" in page
    assert "1 h 10 min" in page or "1 h 09 min" in page


@pytest.mark.django_db
def test_a_batch_without_progress_has_no_eta(bob_client):
    obj = batch_json("in_progress", total=500, completed=0, failed=0)
    store_batches("sim", [obj])
    batch = Batch.objects.get()
    add_samples(batch, [(20, 0, 0)])

    estimate = progress.estimate(batch, progress.load_points(batch))

    assert not estimate.rate_per_minute
    assert estimate.eta is None
    assert "unknown: no progress measured yet" in live_part(detail(bob_client, obj))


def test_eta_past_expiry_is_flagged():
    now = timezone.now()
    batch = Batch(
        status="in_progress",
        request_total=1000,
        request_completed=100,
        request_failed=0,
        created_at=now - dt.timedelta(hours=23),
        expires_at=now + dt.timedelta(minutes=30),
        in_progress_at=now - dt.timedelta(hours=22),
        progressed_at=now,
        synced_at=now,
    )
    points = [progress.Point(now - dt.timedelta(minutes=15), 90, 0), progress.Point(now, 100, 0)]

    estimate = progress.estimate(batch, points, now)

    assert estimate.rate_per_minute == pytest.approx(10 / 15)
    assert estimate.after_expiry is True


def test_chart_scales_completed_and_failed_to_the_total():
    now = timezone.now()
    batch = Batch(status="in_progress", request_total=100)
    points = [progress.Point(now - dt.timedelta(minutes=10), 0, 0), progress.Point(now, 50, 25)]

    chart = progress.chart(batch, points)

    assert chart is not None
    completed, failed = chart.completed_points.split(), chart.failed_points.split()
    plot = chart.height - 4  # 2 units of padding at the top and the bottom
    assert completed[0] == failed[0] == f"2.0,{chart.height - 2:.1f}"
    assert completed[-1] == f"{chart.width - 2:.1f},{2 + plot * 0.5:.1f}"
    assert failed[-1] == f"{chart.width - 2:.1f},{2 + plot * 0.75:.1f}"
    assert progress.chart(batch, points[:1]) is None


@pytest.mark.django_db
def test_stuck_flag_on_the_detail_page(bob_client, settings):
    obj = batch_json("finalizing")
    obj["finalizing_at"] = NOW - (settings.FINALIZING_STUCK_AFTER_MINUTES + 5) * 60
    store_batches("sim", [obj])

    page = live_part(detail(bob_client, obj))

    assert f"finalizing for more than {settings.FINALIZING_STUCK_AFTER_MINUTES} minutes" in page


@pytest.mark.django_db
def test_query_count_does_not_grow_with_samples_or_errors(bob_client, django_assert_num_queries):
    small = batch_json("in_progress")
    big = batch_json(
        "failed", errors=[{"code": "x", "message": "m", "param": None, "line": i} for i in range(30)]
    )
    store_batches("sim", [small, big])
    add_samples(Batch.objects.get(batch_id=small["id"]), [(5, 1, 0)])
    add_samples(Batch.objects.get(batch_id=big["id"]), [(i, i, 0) for i in range(300, 0, -1)])

    with CaptureQueriesContext(connection) as few:
        detail(bob_client, small)
    with django_assert_num_queries(len(few.captured_queries)):
        detail(bob_client, big)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/batches/sim/batch_x%2F../",
        "/batches/sim/batch_x%2F..%2F..%2Ffiles/",
        "/batches/sim/b\u0430tch_abc123/",  # Cyrillic a
        "/batches/sim/batch_\u0430bc/",
        "/batches/sim/batch_" + "a" * 101 + "/",
        "/batches/sim/batch_abc%0A/",
        "/batches/sim/batch_doesnotexist123/",
        "/batches/nobody/batch_abc123/",
        "/batches/sim/batch_x%2F../live/",
        "/batches/sim/batch_x%2F../row/",
        "/batches/nobody/batch_abc123/live/",
    ],
)
def test_malformed_or_unknown_ids_are_404_without_an_upstream_request(
    bob_client, settings, monkeypatch, path
):
    settings.SYNC_ON_DEMAND = True  # a page view could sync: a 404 must not
    store_batches("sim", [batch_json(id="batch_abc123")])
    refreshes: list[object] = []
    monkeypatch.setattr("batches.sync.refresh_stale_in_background", lambda *a, **k: refreshes.append(a))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        response = bob_client.get(path)

    assert response.status_code == 404
    assert len(upstream.calls) == 0
    assert refreshes == []


@pytest.mark.django_db
def test_404_sends_nothing_to_a_live_simulator(bob_client, simulator, sim_account, settings):
    settings.SYNC_ON_DEMAND = True
    before = simulator.total_requests()

    for path in (
        "/batches/sim/batch_x%2F../",
        "/batches/sim/b\u0430tch_1/",
        "/batches/sim/batch_unknown/live/",
        "/batches/sim/batch_unknown/files/file-abc/",
    ):
        assert bob_client.get(path).status_code == 404
    # A background refresh the views might have started would have to finish first.
    for thread in threading.enumerate():
        if thread.name.startswith(("sync-", "refresh-")):
            thread.join(10)

    assert simulator.total_requests() == before
