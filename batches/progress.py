"""Processing rate, ETA and the progress chart of one batch, from its BatchSample history.

The upstream reports only counts, never a rate: the mirror samples the counts whenever they move,
and the rate is the slope over the recent samples. A batch stuck at 0/N has no rate, and says so,
instead of an ETA that would look hopeful.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone

from batches.models import Batch, BatchSample

# The rate is measured over this much recent history, so it follows speed-ups and slow-downs.
RATE_WINDOW = dt.timedelta(minutes=15)
# Less time than this between two points gives a rate too noisy to show.
MIN_SPAN = dt.timedelta(seconds=30)
CHART_WIDTH = 600
CHART_HEIGHT = 140
CHART_MAX_POINTS = 240


@dataclass(frozen=True)
class Point:
    at: dt.datetime
    completed: int
    failed: int

    @property
    def done(self) -> int:
        return self.completed + self.failed


@dataclass(frozen=True)
class Estimate:
    rate_per_minute: float | None
    eta: dt.timedelta | None
    finishes_at: dt.datetime | None
    # The ETA lands after expires_at: the batch will likely expire with part of its requests undone.
    after_expiry: bool
    # How the rate was measured, for the page: "last 15 min" (RATE_WINDOW), "since the first
    # sample" (a shorter history), "whole run", or "".
    basis: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    completed_points: str
    failed_points: str
    total: int
    start: dt.datetime
    end: dt.datetime


def load_points(batch: Batch) -> list[Point]:
    """The samples, oldest first, and the mirror's current counts as the newest point.

    Samples are written only when counts move, so the current counts still held at `synced_at`
    (the last time the upstream confirmed them) close the series: a stall shows as a flat line.
    """
    rows = (
        BatchSample.objects.filter(batch_id=batch.pk).order_by("at").values_list("at", "completed", "failed")
    )
    points = [Point(at, completed, failed) for at, completed, failed in rows]
    if batch.request_total is None:
        return points
    current = Point(batch.progressed_at, batch.request_completed or 0, batch.request_failed or 0)
    if not points or (current.at > points[-1].at and current.done != points[-1].done):
        points.append(current)
    end = batch.terminal_at if batch.is_terminal else batch.synced_at
    if end is not None and points and end > points[-1].at:
        points.append(Point(end, points[-1].completed, points[-1].failed))
    return points


def estimate(batch: Batch, points: list[Point], now: dt.datetime | None = None) -> Estimate:
    now = now or timezone.now()
    total = batch.request_total
    rate, basis = _recent_rate(points)
    if rate is None:
        rate, basis = _overall_rate(batch, now)
    eta: dt.timedelta | None = None
    finishes_at: dt.datetime | None = None
    if total is not None and batch.status in ("validating", "in_progress") and rate:
        remaining = max(total - batch.requests_done, 0)
        eta = dt.timedelta(minutes=remaining / rate)
        finishes_at = now + eta
    after_expiry = bool(finishes_at and batch.expires_at and finishes_at > batch.expires_at)
    return Estimate(rate, eta, finishes_at, after_expiry, basis)


def _recent_rate(points: list[Point]) -> tuple[float | None, str]:
    if len(points) < 2:
        return None, ""
    last = points[-1]
    start = last.at - RATE_WINDOW
    # The newest point at or before the window's start, so the window is measured in full.
    base = points[0]
    for point in points:
        if point.at > start:
            break
        base = point
    span = last.at - base.at
    if span < MIN_SPAN:
        return None, ""
    rate = (last.done - base.done) / (span.total_seconds() / 60)
    # A full window when the base lies at or before its start, even when that base is the first sample.
    basis = f"last {RATE_WINDOW.total_seconds() / 60:g} min" if base.at <= start else "since the first sample"
    return max(rate, 0.0), basis


def _overall_rate(batch: Batch, now: dt.datetime) -> tuple[float | None, str]:
    """The average since processing began, when there are no usable samples (or it has ended)."""
    began = batch.in_progress_at
    if began is None or batch.request_total is None:
        return None, ""
    end = batch.finalizing_at or batch.terminal_at or batch.synced_at or now
    span = end - began
    if span < MIN_SPAN:
        return None, ""
    return batch.requests_done / (span.total_seconds() / 60), "whole run"


def chart(batch: Batch, points: list[Point]) -> Chart | None:
    """Completed and failed over time as SVG polyline coordinates, scaled to the request total."""
    if len(points) < 2 or not batch.request_total:
        return None
    start, end = points[0].at, points[-1].at
    seconds = (end - start).total_seconds()
    if seconds <= 0:
        return None
    if len(points) > CHART_MAX_POINTS:
        step = len(points) / CHART_MAX_POINTS
        points = [points[int(i * step)] for i in range(CHART_MAX_POINTS - 1)] + [points[-1]]
    total = max(batch.request_total, max(p.done for p in points))
    pad = 2.0
    width, height = CHART_WIDTH - 2 * pad, CHART_HEIGHT - 2 * pad

    def xy(point: Point, value: int) -> str:
        x = pad + width * (point.at - start).total_seconds() / seconds
        y = pad + height * (1 - value / total)
        return f"{x:.1f},{y:.1f}"

    return Chart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        completed_points=" ".join(xy(p, p.completed) for p in points),
        failed_points=" ".join(xy(p, p.failed) for p in points),
        total=total,
        start=start,
        end=end,
    )
