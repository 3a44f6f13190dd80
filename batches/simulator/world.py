"""The simulated account: its batches and files, request statistics and faults."""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from .clock import SimClock
from .faults import ANSWERING_KINDS, ApiError, Fault, batch_not_found, cannot_cancel, file_not_found
from .files import FileSpec, content_size, file_object, iter_chunks
from .plans import STATUSES, Plan, file_ids_at, render_batch, state_at
from .seeding import (
    ACTIVE_PHASES,
    active_plan,
    arrival_plan,
    base_plan,
    live_timeline,
    place_plan,
    run_timeline,
    set_validation_failure,
    terminal_plan,
)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Arrivals are created lazily when the clock has passed their time; a huge clock jump with a tiny
# interval must not create millions of batches.
MAX_ARRIVALS = 100_000
# A cancel always answers `cancelling`, even with cancel_delay=0: it turns cancelled a moment later.
MIN_CANCEL_DELAY = 0.001
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CREATE_FIELDS = frozenset(
    {
        "status",
        "total",
        "failed",
        "endpoint",
        "model",
        "metadata",
        "progress",
        "outcome",
        "validating_seconds",
        "in_progress_seconds",
        "finalizing_seconds",
    }
)
# Terminal outcomes of the seeded history, as shares of the non-active batches.
OUTCOME_SHARES = (("failed", 0.05), ("expired", 0.04), ("cancelled", 0.05))
OLD_SHARE = 0.02


def _base62(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(BASE62[rest])
    return "".join(chars)


def default_active(batches: int) -> int:
    share = round(batches * 0.03)
    return min(batches, max(3, share)) if batches >= 10 else share


class Simulator:
    """A deterministic OpenAI account holding `batches` batches, newest first.

    Each batch is a `Plan` (its whole future) and its JSON is computed from the plan and the clock,
    so advancing `clock` is all it takes to make batches progress. One lock guards everything.
    """

    def __init__(
        self,
        *,
        batches: int = 300,
        seed: int = 1,
        clock: SimClock | None = None,
        cancel_delay: float = 10.0,
        api_keys: Iterable[str] = ("sk-sim-local",),
        active: int | None = None,
        arrival_interval: float = 0.0,
        id_prefix: str = "",
    ) -> None:
        if batches < 0:
            raise ValueError("batches must be >= 0")
        self.clock = clock or SimClock()
        self.seed = seed
        self.cancel_delay = cancel_delay
        self.api_keys = frozenset(api_keys)
        self.arrival_interval = arrival_interval
        self.id_prefix = id_prefix
        self._lock = threading.RLock()
        self._plans: list[Plan] = []  # Oldest first, so new batches append; the API reads it backwards.
        self._index: dict[str, int] = {}
        self._files: dict[str, tuple[int, str]] = {}
        self._file_sizes: dict[str, int] = {}
        self._faults: list[Fault] = []
        self._stats: Counter[str] = Counter()
        self._fault_rng = self._rng("faults")
        self._arrival_rng = self._rng("arrivals")
        self._custom_rng = self._rng("custom")
        self._arrivals = 0
        now = self.clock.now()
        self._seed_world(batches, default_active(batches) if active is None else active, now)
        self._next_arrival = now + arrival_interval if arrival_interval > 0 else math.inf

    # -- construction --------------------------------------------------------------------------

    def _rng(self, purpose: str) -> random.Random:
        # The prefix is mixed in so two accounts with the same seed still look different.
        return random.Random(f"{purpose}|{self.seed}|{self.id_prefix}")

    def _seed_world(self, batches: int, active: int, now: float) -> None:
        rng = self._rng("world")
        active = max(0, min(active, batches))
        terminal = batches - active
        outcomes: list[str] = []
        for outcome, share in OUTCOME_SHARES:
            outcomes += [outcome] * round(terminal * share)
        outcomes += ["completed"] * (terminal - len(outcomes))
        rng.shuffle(outcomes)
        old_count = max(1, round(batches * OLD_SHARE)) if batches >= 50 else round(batches * OLD_SHARE)
        old = set(rng.sample(range(terminal), min(old_count, terminal)))
        plans = [terminal_plan(rng, now, outcome, i in old) for i, outcome in enumerate(outcomes)]
        for i in range(active):
            phase = ACTIVE_PHASES[i] if i < len(ACTIVE_PHASES) else self._random_phase(rng)
            plans.append(active_plan(rng, now, phase))
        plans.sort(key=lambda plan: plan.created_at)
        for plan in plans:
            self._register(plan)

    @staticmethod
    def _random_phase(rng: random.Random) -> str:
        phases = ("in_progress", "validating", "finalizing", "cancelling")
        return rng.choices(phases, weights=(55, 20, 15, 10))[0]

    def _make_id(self, serial: int, kind: str) -> str:
        digest = hashlib.sha256(f"{self.id_prefix}|{self.seed}|{serial}|{kind}".encode()).digest()
        if kind == "batch":
            return "batch_" + digest.hex()[:32]
        return "file-" + _base62(digest, 22)

    def _register(self, plan: Plan) -> None:
        serial = len(self._plans)
        plan.serial = serial
        plan.id = self._make_id(serial, "batch")
        plan.input_file_id = self._make_id(serial, "input")
        plan.output_file_id = self._make_id(serial, "output")
        plan.error_file_id = self._make_id(serial, "error")
        self._plans.append(plan)
        self._index[plan.id] = serial
        for kind in ("input", "output", "error"):
            self._files[getattr(plan, f"{kind}_file_id")] = (serial, kind)

    def _catch_up(self, now: float) -> None:
        """Create the batches that arrived since the last request (arrival_interval > 0)."""
        while self._next_arrival <= now and self._arrivals < MAX_ARRIVALS:
            self._register(arrival_plan(self._arrival_rng, self._next_arrival))
            self._arrivals += 1
            self._next_arrival += self.arrival_interval

    def _now(self) -> float:
        now = self.clock.now()
        self._catch_up(now)
        return now

    def _plan(self, batch_id: str) -> Plan:
        serial = self._index.get(batch_id)
        if serial is None:
            raise batch_not_found(batch_id)
        return self._plans[serial]

    # -- batches -------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._now()
            return len(self._plans)

    def now(self) -> float:
        return self.clock.now()

    def batch_ids(self) -> list[str]:
        """Every batch id, newest first."""
        with self._lock:
            self._now()
            return [plan.id for plan in reversed(self._plans)]

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch's current JSON; raises ApiError(404) for an unknown id."""
        with self._lock:
            return render_batch(self._plan(batch_id), self._now())

    def list_batches(self, after: str | None = None, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """One page of `GET /batches`, newest first, starting after the batch `after`."""
        if not 1 <= limit <= MAX_LIMIT:
            below = limit < 1
            raise ApiError(
                400,
                f"Invalid 'limit': integer {'below minimum' if below else 'above maximum'} value. "
                f"Expected a value {'>= 1' if below else f'<= {MAX_LIMIT}'}, but got {limit} instead.",
                param="limit",
                code="integer_below_min_value" if below else "integer_above_max_value",
            )
        with self._lock:
            now = self._now()
            newest = len(self._plans) - 1
            start = newest
            if after:
                serial = self._index.get(after)
                if serial is None:
                    # The API documents no answer for an unknown cursor; refusing it loudly beats an
                    # empty page that would silently truncate a listing.
                    raise ApiError(400, f"Invalid 'after': no batch found with id '{after}'.", param="after")
                start = serial - 1
            stop = max(-1, start - limit)
            data = [render_batch(self._plans[i], now) for i in range(start, stop, -1)]
            return {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": stop > -1,
            }

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """`POST /batches/{id}/cancel`: cancelling now, cancelled after `cancel_delay` simulated seconds."""
        with self._lock:
            now = self._now()
            plan = self._plan(batch_id)
            state = state_at(plan, now)
            if state.status == "cancelling":
                return render_batch(plan, now)
            if state.terminal:
                raise cannot_cancel(state.status)
            plan.cancel_at = now
            plan.cancel_done = now + max(self.cancel_delay, MIN_CANCEL_DELAY)
            return render_batch(plan, now)

    def cancel_outside(self, batch_id: str) -> dict[str, Any]:
        """A cancel from elsewhere (another tool, the provider): same effect, not an API request."""
        return self.cancel(batch_id)

    def create_batch(self, **overrides: Any) -> dict[str, Any]:
        """Add a batch created now at the top of the list and return its JSON.

        `status`: validating, in_progress (default), finalizing, completed, failed, cancelling or
        cancelled (not expired: that takes 24 hours). Optional: total, failed (requests that will
        fail), endpoint, model, metadata, progress (share already done, 0..1), outcome ("failed" to
        make a validating batch fail validation), validating_seconds, in_progress_seconds,
        finalizing_seconds.
        """
        unknown = set(overrides) - CREATE_FIELDS
        if unknown:
            raise ValueError(f"unknown create_batch fields: {sorted(unknown)}")
        status = overrides.get("status", "in_progress")
        if status not in STATUSES or status == "expired":
            raise ValueError(f"cannot create a batch with status {status!r}")
        with self._lock:
            now = self._now()
            plan = self._custom_plan(status, overrides)
            self._register(place_plan(self._custom_rng, plan, now))
            return render_batch(plan, now)

    def _custom_plan(self, status: str, overrides: dict[str, Any]) -> Plan:
        rng = self._custom_rng
        workload = {
            key: overrides[key] for key in ("endpoint", "model", "total", "metadata") if key in overrides
        }
        plan = base_plan(rng, **workload)
        live_timeline(rng, plan)
        plan.stall = 0.0  # Tests create batches to watch them move: no surprise stalls.
        validate = float(overrides.get("validating_seconds", plan.validated_at))
        run = float(overrides.get("in_progress_seconds", plan.finalizing_at - plan.validated_at))
        finalize = float(overrides.get("finalizing_seconds", plan.completed_at - plan.finalizing_at))
        if "failed" in overrides:
            plan.failed_total = max(0, min(plan.total, int(overrides["failed"])))
        plan.start_progress = max(0.0, min(1.0, float(overrides.get("progress", 0.0))))
        if status == "validating":
            run_timeline(plan, validate, run, finalize)
            if overrides.get("outcome") == "failed":
                set_validation_failure(rng, plan)
        elif status == "finalizing":
            run_timeline(plan, 0.0, 0.0, finalize)
        elif status in {"completed", "failed"}:
            run_timeline(plan, 0.0, 0.0, 0.0)
            if status == "failed":
                set_validation_failure(rng, plan)
        else:
            run_timeline(plan, 0.0, run, finalize)
        if status == "cancelling":
            plan.cancel_at, plan.cancel_done = 0.0, max(self.cancel_delay, MIN_CANCEL_DELAY)
        elif status == "cancelled":
            plan.cancel_at, plan.cancel_done = 0.0, 0.0
        return plan

    # -- files ---------------------------------------------------------------------------------

    def _file_spec(self, file_id: str) -> FileSpec:
        with self._lock:
            now = self._now()
            entry = self._files.get(file_id)
            if entry is None:
                raise file_not_found(file_id)
            serial, kind = entry
            plan = self._plans[serial]
            model = plan.model or "gpt-4o-mini"
            if kind == "input":
                # Uploaded shortly before the batch was created.
                created = int(plan.created_at) - 5 - serial % 90
                return FileSpec(
                    file_id, kind, plan.id, plan.endpoint, model, created, plan.input_filename, plan.total
                )
            state = state_at(plan, now)
            if file_id not in file_ids_at(plan, state):
                raise file_not_found(file_id)  # Not written yet (or never: nothing to put in it).
            ended = state.completed_at or state.cancelled_at or state.expired_at or now
            filename = f"{plan.id}_{kind}.jsonl"
            return FileSpec(
                file_id,
                kind,
                plan.id,
                plan.endpoint,
                model,
                int(ended),
                filename,
                state.total,
                state.completed,
                state.failed,
                state.unfinished,
                plan.usage,
            )

    def _size(self, spec: FileSpec) -> int:
        # A visible file never changes, so its size is computed once, outside the lock.
        with self._lock:
            size = self._file_sizes.get(spec.file_id)
        if size is None:
            size = content_size(spec)
            with self._lock:
                self._file_sizes[spec.file_id] = size
        return size

    def get_file(self, file_id: str) -> dict[str, Any]:
        spec = self._file_spec(file_id)
        return file_object(spec, self._size(spec))

    def file_content(self, file_id: str) -> tuple[int, Iterator[bytes]]:
        """The content's length in bytes and an iterator over its chunks (generated lazily)."""
        spec = self._file_spec(file_id)
        return self._size(spec), iter_chunks(spec)

    # -- auth, statistics, faults --------------------------------------------------------------

    def key_is_valid(self, key: str) -> bool:
        return key in self.api_keys

    def record_request(self, route_key: str) -> None:
        with self._lock:
            self._stats[route_key] += 1

    def stats(self) -> dict[str, int]:
        """API requests served, keyed by route, e.g. {"GET /batches": 3, "GET /batches/{id}": 1}."""
        with self._lock:
            return dict(self._stats)

    def total_requests(self) -> int:
        with self._lock:
            return sum(self._stats.values())

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
            return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take_faults(self, method: str, route: str, route_key: str) -> list[Fault]:
        """The faults that hit this request, counted as used: latencies, then at most one answer."""
        hit: list[Fault] = []
        with self._lock:
            for fault in self._faults:
                if not fault.matches(method, route, route_key):
                    continue
                if fault.rate < 1.0 and self._fault_rng.random() >= fault.rate:
                    continue
                fault.consume()
                hit.append(fault)
                if fault.kind in ANSWERING_KINDS:
                    break
        return hit
