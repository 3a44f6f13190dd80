"""A batch's plan (its whole future, fixed when it is created) and its state at any instant.

Storing the plan instead of the state is what lets 10,000 batches move on with the clock for free:
the JSON for a batch is computed from the plan and `now` when someone asks for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY = 86_400.0
COMPLETION_WINDOW = DAY
# OpenAI only fills `usage` for batches created after this instant (2025-09-07T00:00:00Z).
USAGE_CUTOFF = 1_757_203_200.0
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})
STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
NEVER = math.inf


@dataclass(frozen=True, slots=True)
class UsageRates:
    """Average tokens per successful request; the batch's usage is these times `completed`."""

    input_tokens: int
    cached_share: float
    output_tokens: int
    reasoning_share: float


@dataclass(slots=True)
class Plan:
    """Everything that will happen to one batch, as simulated instants (floats, Unix seconds).

    validating until `validated_at`; then failed (outcome "failed") or in_progress until
    `finalizing_at`, finalizing until `completed_at`. An expiring plan never finalizes: it stops
    processing at `expires_at` and turns expired at `expired_at`. A cancel at `cancel_at` freezes the
    counts as they were at that instant and turns cancelled at `cancel_done`.
    """

    endpoint: str
    model: str | None
    metadata: dict[str, str] | None
    created_at: float
    validated_at: float
    total: int
    outcome: str = "completed"
    finalizing_at: float = NEVER
    completed_at: float = NEVER
    expired_at: float | None = None
    failed_total: int = 0
    stall: float = 0.0
    start_progress: float = 0.0
    errors: list[dict[str, Any]] | None = None
    usage: UsageRates | None = None
    empty_error_file_id: bool = False
    input_filename: str = "batch_input.jsonl"
    cancel_at: float | None = None
    cancel_done: float | None = None
    serial: int = -1
    id: str = ""
    input_file_id: str = ""
    output_file_id: str = ""
    error_file_id: str = ""

    @property
    def expires_at(self) -> float:
        return self.created_at + COMPLETION_WINDOW


@dataclass(frozen=True, slots=True)
class State:
    """What a plan looks like at one instant."""

    status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def unfinished(self) -> int:
        """Requests never run: an expired batch lists them in its error file as `batch_expired`."""
        return self.total - self.completed - self.failed if self.status == "expired" else 0


def _processed(plan: Plan, t: float) -> int:
    # Progress is linear in time after an optional stall (the "stuck at 0/N" users worry about).
    span = plan.finalizing_at - plan.validated_at - plan.stall
    if span <= 0 or span == NEVER:
        return plan.total if t >= plan.finalizing_at else 0
    share = (t - plan.validated_at - plan.stall) / span
    share = plan.start_progress + (1.0 - plan.start_progress) * min(1.0, max(0.0, share))
    return min(plan.total, math.floor(plan.total * share + 1e-9))


def _counts(plan: Plan, processed: int) -> tuple[int, int]:
    # Failures are spread evenly so the partial counts of a cancelled batch keep the final ratio.
    failed = processed * plan.failed_total // plan.total if plan.total else 0
    return processed - failed, failed


def _natural_state(plan: Plan, t: float) -> State:
    """The state if nobody cancels."""
    if t < plan.validated_at:
        return State("validating")
    if plan.outcome == "failed":
        return State("failed", failed_at=plan.validated_at)
    started = plan.validated_at
    if plan.expired_at is not None:
        stop = min(t, plan.expires_at)
        completed, failed = _counts(plan, _processed(plan, stop))
        if t >= plan.expired_at:
            return State("expired", plan.total, completed, failed, started, expired_at=plan.expired_at)
        return State("in_progress", plan.total, completed, failed, started)
    if t < plan.finalizing_at:
        completed, failed = _counts(plan, _processed(plan, t))
        return State("in_progress", plan.total, completed, failed, started)
    completed, failed = _counts(plan, plan.total)
    if t < plan.completed_at:
        return State("finalizing", plan.total, completed, failed, started, plan.finalizing_at)
    return State("completed", plan.total, completed, failed, started, plan.finalizing_at, plan.completed_at)


def state_at(plan: Plan, t: float) -> State:
    if plan.cancel_at is None or t < plan.cancel_at:
        return _natural_state(plan, t)
    before = _natural_state(plan, plan.cancel_at)
    done = plan.cancel_done if plan.cancel_done is not None else plan.cancel_at
    return State(
        "cancelled" if t >= done else "cancelling",
        before.total,
        before.completed,
        before.failed,
        before.in_progress_at,
        before.finalizing_at,
        cancelling_at=plan.cancel_at,
        cancelled_at=done if t >= done else None,
    )


def file_ids_at(plan: Plan, state: State) -> tuple[str | None, str | None]:
    """Output and error file ids as the API shows them: only once terminal, and only if non-empty."""
    if state.status not in {"completed", "cancelled", "expired"}:
        return None, None
    output = plan.output_file_id if state.completed else None
    if state.failed or state.unfinished:
        return output, plan.error_file_id
    # Reported by users: a clean batch sometimes carries "" rather than null.
    return output, "" if plan.empty_error_file_id else None


def usage_at(plan: Plan, state: State) -> dict[str, Any] | None:
    if plan.usage is None:
        return None
    rates = plan.usage
    input_tokens = state.completed * rates.input_tokens
    output_tokens = state.completed * rates.output_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": int(input_tokens * rates.cached_share)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": int(output_tokens * rates.reasoning_share)},
        "total_tokens": input_tokens + output_tokens,
    }


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def render_batch(plan: Plan, now: float) -> dict[str, Any]:
    """The Batch object, every field present, absent values as explicit nulls (like the API)."""
    state = state_at(plan, now)
    output_file_id, error_file_id = file_ids_at(plan, state)
    errors = {"object": "list", "data": [dict(e) for e in plan.errors]} if plan.errors else None
    return {
        "id": plan.id,
        "object": "batch",
        "endpoint": plan.endpoint,
        "model": plan.model,
        "errors": errors if state.status == "failed" else None,
        "input_file_id": plan.input_file_id,
        "completion_window": "24h",
        "status": state.status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": int(plan.created_at),
        "in_progress_at": _ts(state.in_progress_at),
        "expires_at": int(plan.expires_at),
        "finalizing_at": _ts(state.finalizing_at),
        "completed_at": _ts(state.completed_at),
        "failed_at": _ts(state.failed_at),
        "expired_at": _ts(state.expired_at),
        "cancelling_at": _ts(state.cancelling_at),
        "cancelled_at": _ts(state.cancelled_at),
        "request_counts": {"total": state.total, "completed": state.completed, "failed": state.failed},
        "usage": usage_at(plan, state),
        "metadata": dict(plan.metadata) if plan.metadata is not None else None,
    }
