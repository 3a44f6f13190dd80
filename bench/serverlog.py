"""The refresh cycles gunicorn's workers ran, read back from their log (logger `batches`, INFO).

A cycle logs each upstream request when its answer arrives and one `sync account=...` line at
the end; its start is the first request's log time minus that request's duration.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from bench.web import Sample

LINE_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
UPSTREAM = re.compile(
    LINE_TIME + r"batches\.upstream .*method=GET path=/batches\S* status=\d+ duration_ms=(\d+)", re.M
)
SYNC = re.compile(LINE_TIME + r"batches\.sync sync account=\S+ requests=(\d+) ", re.M)


@dataclass(frozen=True)
class Cycle:
    start: float
    end: float
    requests: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _when(stamp: str) -> float:
    # The children run with TIME_ZONE=UTC, so Django logs in UTC whatever the machine's zone.
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=dt.UTC).timestamp()


def refresh_cycles(log: str) -> list[Cycle]:
    events = [(m.start(), "upstream", _when(m.group(1)), int(m.group(2))) for m in UPSTREAM.finditer(log)]
    events += [(m.start(), "sync", _when(m.group(1)), int(m.group(2))) for m in SYNC.finditer(log)]
    cycles = []
    start: float | None = None
    for _, kind, at, number in sorted(events):
        if kind == "upstream":
            if start is None:
                start = at - number / 1000
        else:
            cycles.append(Cycle(start if start is not None else at, at, number))
            start = None
    return cycles


def during_refresh(sample: Sample, cycles: Iterable[Cycle]) -> bool:
    """Whether a refresh cycle ran (in either worker) at some point while the request was served."""
    return any(sample.started < c.end and c.start < sample.ended for c in cycles)
