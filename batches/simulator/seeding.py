"""Deterministic, realistic plans: workloads, outcomes, timelines, metadata and validation errors."""

from __future__ import annotations

import math
import random
from typing import Any

from .plans import COMPLETION_WINDOW, DAY, USAGE_CUTOFF, Plan, UsageRates

MINUTE = 60.0
HOUR = 3600.0
HISTORY = 30 * DAY

# (endpoint, model, weight). Reasoning models report reasoning tokens inside output tokens.
WORKLOADS: tuple[tuple[str, str, int], ...] = (
    ("/v1/chat/completions", "gpt-4o-mini", 24),
    ("/v1/chat/completions", "gpt-4.1", 10),
    ("/v1/chat/completions", "gpt-5-mini", 9),
    ("/v1/chat/completions", "o4-mini", 6),
    ("/v1/responses", "gpt-4o-mini", 6),
    ("/v1/responses", "gpt-4.1", 6),
    ("/v1/responses", "gpt-5-mini", 8),
    ("/v1/responses", "o4-mini", 5),
    ("/v1/embeddings", "text-embedding-3-small", 14),
    ("/v1/moderations", "omni-moderation-latest", 7),
    ("/v1/completions", "gpt-3.5-turbo-instruct", 3),
)
REASONING_MODELS = frozenset({"o4-mini", "gpt-5-mini"})
ACTIVE_PHASES = ("in_progress", "validating", "finalizing", "cancelling", "in_progress")

OWNERS = ("maria.k", "dev.patel", "li.wei", "sam.o", "team-search", "team-support", "eval-bot", "j.müller")
JOBS = (
    "Nightly eval: support triage",
    "Backfill product summaries",
    "Embed help-center articles",
    "Moderate forum backlog",
    "Classify inbound tickets",
    "Translate release notes (de, fr, ja)",
    "Regression eval for prompt v{n}",
    "Weekly churn-risk scoring",
    "Re-rank search results sample",
    "Extract invoice fields",
)
# Metadata is untrusted user text; a few entries make sure the dashboard escapes it.
HOSTILE_DESCRIPTIONS = (
    "<script>alert('xss')</script> nightly run",
    '"><img src=x onerror=alert(1)> backfill',
    "Ünïcødé ✓ 测试 — rtl \u202eevil\u202c text",
)


def pick_workload(rng: random.Random) -> tuple[str, str]:
    endpoint, model, _ = rng.choices(WORKLOADS, weights=[w for *_, w in WORKLOADS])[0]
    return endpoint, model


def pick_total(rng: random.Random, endpoint: str) -> int:
    # Log-normal: mostly hundreds to a few thousand requests, a long tail up to the 50,000 limit.
    median = 3000 if endpoint == "/v1/embeddings" else 600
    return max(1, min(50_000, int(math.exp(rng.gauss(math.log(median), 1.3)))))


def pick_usage(rng: random.Random, endpoint: str, model: str) -> UsageRates:
    if endpoint == "/v1/embeddings":
        return UsageRates(rng.randint(40, 600), 0.0, 0, 0.0)
    if endpoint == "/v1/moderations":
        return UsageRates(rng.randint(60, 900), 0.0, 0, 0.0)
    reasoning = rng.uniform(0.45, 0.85) if model in REASONING_MODELS else 0.0
    output = rng.randint(60, 900) + (rng.randint(200, 2500) if reasoning else 0)
    cached = rng.choice((0.0, 0.0, rng.uniform(0.05, 0.7)))
    return UsageRates(rng.randint(150, 3500), cached, output, reasoning)


def pick_metadata(rng: random.Random) -> dict[str, str] | None:
    roll = rng.random()
    if roll < 0.06:
        return None
    if roll < 0.12:
        return {}
    description = rng.choice(JOBS).format(n=rng.randint(2, 40))
    if roll > 0.985:
        description = rng.choice(HOSTILE_DESCRIPTIONS)
    metadata = {
        "description": description,
        "owner": rng.choice(OWNERS),
        "ticket": f"{rng.choice(('ML', 'DATA', 'OPS', 'SUP'))}-{rng.randint(100, 9999)}",
    }
    if rng.random() < 0.15:
        metadata["customer_id"] = f"user_{rng.randint(10**8, 10**9 - 1)}"
    if rng.random() < 0.01:
        # The API's limits: 16 pairs, keys up to 64 characters, values up to 512.
        metadata.update({f"k{i:02d}_" + "x" * 56: "v" * 512 for i in range(16 - len(metadata))})
    return metadata


def pick_validation_errors(rng: random.Random, total: int, model: str) -> list[dict[str, Any]]:
    kind = rng.choice(("token_limit", "url", "duplicate", "json", "model"))
    if kind == "token_limit":
        return [
            {
                "code": "token_limit_exceeded",
                "message": f"Enqueued token limit reached for {model} in organization org-sim. "
                "Limit: 2,000,000 enqueued tokens. Please try submitting your batch again later.",
                "param": None,
                "line": None,
            }
        ]
    lines = sorted(rng.sample(range(1, max(total, 6) + 1), rng.choice((1, 1, 2, 3, 5))))
    if kind == "url":
        message, param, code = (
            "The URL provided for this request does not prefix-match the batch endpoint.",
            "url",
            "invalid_url",
        )
    elif kind == "duplicate":
        message, param, code = (
            "The custom_id for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch.",
            "custom_id",
            "duplicate_custom_id",
        )
    elif kind == "json":
        message, param, code = ("This line is not parseable as valid JSON.", None, "invalid_json_line")
    else:
        message, param, code = (
            f"The provided model '{model}-typo' is not supported by the Batch API.",
            "body.model",
            "model_not_found",
        )
    return [{"code": code, "message": message, "param": param, "line": line} for line in lines]


def pick_failed_total(rng: random.Random, total: int) -> int:
    roll = rng.random()
    if roll < 0.5:
        return 0
    if roll < 0.97:
        return min(total, int(total * rng.uniform(0.001, 0.05)))
    # Every request failed: the batch still completes, with only an error file.
    return total


def base_plan(rng: random.Random, **overrides: Any) -> Plan:
    """A plan at created_at 0 with workload and metadata filled; see `place_plan` for the rest."""
    endpoint, model = pick_workload(rng)
    endpoint = overrides.pop("endpoint", endpoint)
    model = overrides.pop("model", model)
    total = overrides.pop("total", None) or pick_total(rng, endpoint)
    metadata = overrides.pop("metadata") if "metadata" in overrides else pick_metadata(rng)
    plan = Plan(
        endpoint=endpoint,
        model=model,
        metadata=metadata,
        created_at=0.0,
        validated_at=0.0,
        total=total,
        input_filename=f"{endpoint.rsplit('/', 1)[-1]}-{rng.randint(1, 999):03d}.jsonl",
    )
    for key, value in overrides.items():
        setattr(plan, key, value)
    return plan


def place_plan(rng: random.Random, plan: Plan, created_at: float) -> Plan:
    """Move a plan built relative to 0 so that it starts at `created_at`, and fill its usage."""
    for name in ("validated_at", "finalizing_at", "completed_at", "cancel_at", "cancel_done"):
        value = getattr(plan, name)
        if value is not None:
            setattr(plan, name, value + created_at)
    plan.created_at = created_at
    if created_at >= USAGE_CUTOFF:
        plan.usage = pick_usage(rng, plan.endpoint, plan.model or "")
    return plan


def run_timeline(plan: Plan, validate: float, run: float, finalize: float) -> None:
    plan.validated_at = validate
    plan.finalizing_at = validate + run
    plan.completed_at = validate + run + finalize


def set_validation_failure(rng: random.Random, plan: Plan) -> None:
    plan.outcome = "failed"
    plan.errors = pick_validation_errors(rng, plan.total, plan.model or "gpt-4o-mini")


def _historic_run(rng: random.Random, total: int) -> float:
    # Real batches take minutes to hours, loosely with size.
    return min(20 * HOUR, rng.uniform(3 * MINUTE, 40 * MINUTE) + total * rng.uniform(0.05, 1.5))


def _terminal_lifetime(rng: random.Random, plan: Plan, outcome: str) -> float:
    """Fill the timeline (relative to creation) and return how long the batch took to end."""
    validate = rng.uniform(5, 4 * MINUTE)
    if outcome == "failed":
        run_timeline(plan, validate, 0.0, 0.0)
        set_validation_failure(rng, plan)  # request_counts stay 0: validation never got to counting.
        return validate
    if outcome == "expired":
        reached = rng.uniform(0.2, 0.9)  # Share of requests done when the 24h window closed.
        plan.failed_total = min(pick_failed_total(rng, plan.total), plan.total // 10)
        run_timeline(plan, validate, (COMPLETION_WINDOW - validate) / reached, 0.0)
        lag = rng.uniform(1 * MINUTE, 20 * MINUTE)
        plan.expired_at = COMPLETION_WINDOW + lag
        return COMPLETION_WINDOW + lag
    run = _historic_run(rng, plan.total)
    finalize = rng.uniform(20, 15 * MINUTE)
    plan.failed_total = pick_failed_total(rng, plan.total)
    run_timeline(plan, validate, run, finalize)
    if outcome == "cancelled":
        # Cancelled during validation or processing; cancels take up to ~10 minutes to land.
        at = validate * rng.random() if rng.random() < 0.1 else validate + run * rng.random()
        plan.cancel_at = at
        plan.cancel_done = at + rng.uniform(20, 10 * MINUTE)
        return plan.cancel_done
    if plan.failed_total == 0 and rng.random() < 0.05:
        plan.empty_error_file_id = True
    return validate + run + finalize


def terminal_plan(rng: random.Random, now: float, outcome: str, old: bool) -> Plan:
    """A batch that reached `outcome` before `now`: in the last 30 days, or before 2025-09-07 if old."""
    plan = base_plan(rng)
    lifetime = _terminal_lifetime(rng, plan, outcome)
    if old:
        newest = min(USAGE_CUTOFF, now - HISTORY) - DAY
        created = newest - rng.uniform(0, 120 * DAY) - lifetime
        plan.model = None  # Batches from before `usage` existed carry no model either.
    else:
        # Denser towards the present, like a team whose usage grows.
        age = HISTORY * (1 - math.sqrt(rng.random()))
        created = now - lifetime - min(age, max(0.0, HISTORY - lifetime))
    if plan.expired_at is not None:
        plan.expired_at += created
    return place_plan(rng, plan, created)


def live_timeline(rng: random.Random, plan: Plan) -> None:
    """Validation, processing and finalizing short enough to watch in a demo (3-30 min in progress)."""
    validate = rng.uniform(20, 3 * MINUTE)
    run = min(30 * MINUTE, 3 * MINUTE + plan.total * rng.uniform(0.02, 0.4) + rng.uniform(0, 10 * MINUTE))
    finalize = rng.uniform(30, 4 * MINUTE)
    if rng.random() < 0.2:
        plan.stall = rng.uniform(1 * MINUTE, min(4 * MINUTE, run / 2))  # The "stuck at 0/N" look.
    plan.failed_total = min(plan.total, int(plan.total * rng.uniform(0.0, 0.04)))
    run_timeline(plan, validate, run, finalize)


def active_plan(rng: random.Random, now: float, phase: str) -> Plan:
    """A batch that is in `phase` right now and moves on with the clock."""
    plan = base_plan(rng)
    live_timeline(rng, plan)
    validate, run = plan.validated_at, plan.finalizing_at - plan.validated_at
    if phase == "validating":
        elapsed = validate * rng.uniform(0.05, 0.8)
        if rng.random() < 0.3:
            set_validation_failure(rng, plan)
    elif phase == "finalizing":
        elapsed = plan.finalizing_at + (plan.completed_at - plan.finalizing_at) * rng.uniform(0.1, 0.7)
    else:
        elapsed = validate + plan.stall + (run - plan.stall) * rng.uniform(0.08, 0.85)
    if phase == "cancelling":
        plan.cancel_at = max(0.0, elapsed - rng.uniform(5, 60))
        plan.cancel_done = plan.cancel_at + rng.uniform(2 * MINUTE, 8 * MINUTE)
    return place_plan(rng, plan, now - elapsed)


def arrival_plan(rng: random.Random, created_at: float) -> Plan:
    """A batch submitted at `created_at` while the simulator runs: it goes through every phase."""
    plan = base_plan(rng)
    live_timeline(rng, plan)
    if rng.random() < 0.08:
        set_validation_failure(rng, plan)
    return place_plan(rng, plan, created_at)
