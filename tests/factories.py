"""Realistic upstream Batch objects for tests that fill the mirror without an upstream."""

from __future__ import annotations

import itertools
import time
from typing import Any

from batches.accounts import Account
from batches.sync import store_batches

_seq = itertools.count(1)
HOUR = 3600
# The simulator's route key for a cancel, in its request counts (Simulator.stats()).
UPSTREAM_CANCEL = "POST /batches/{id}/cancel"


def upstream_cancels(simulator: Any) -> int:
    """How many cancel requests the simulator has served."""
    return int(simulator.stats().get(UPSTREAM_CANCEL, 0))


def offline_account(name: str = "sim") -> Account:
    """An account whose upstream is unreachable (port 9, discard): pages never need it."""
    return Account(name=name, api_key="sk-test-key-0123456789", base_url="http://127.0.0.1:9")


def batch_json(
    status: str = "completed",
    *,
    id: str | None = None,
    created_at: int | None = None,
    total: int | None = 100,
    completed: int | None = None,
    failed: int = 0,
    model: str | None = "gpt-4o-mini",
    endpoint: str = "/v1/chat/completions",
    metadata: dict[str, str] | None = None,
    usage: bool = True,
    errors: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Batch object as the upstream sends it, consistent with its status."""
    n = next(_seq)
    created = created_at if created_at is not None else int(time.time()) - HOUR
    batch: dict[str, Any] = {
        "id": id or f"batch_{n:04d}{'a1b2c3d4e5f6' * 2}",
        "object": "batch",
        "endpoint": endpoint,
        "model": model,
        "errors": None,
        "input_file_id": f"file-in{n:04d}Abc",
        "completion_window": "24h",
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + 24 * HOUR,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": None,
        "usage": None,
        "metadata": metadata if metadata is not None else {"description": f"Nightly eval run {n}"},
    }
    if total is not None:
        done = {"completed": total, "finalizing": total, "failed": 0, "validating": 0}.get(status, total // 2)
        ok = completed if completed is not None else max(done - failed, 0)
        batch["request_counts"] = {
            "total": total if status != "validating" else 0,
            "completed": ok,
            "failed": failed,
        }
    if status != "validating" and status != "failed":
        batch["in_progress_at"] = created + 60
    if status in ("finalizing", "completed"):
        batch["finalizing_at"] = created + 1800
    ended = created + 2000
    if status == "completed":
        batch["completed_at"] = ended
    elif status == "failed":
        batch["failed_at"] = created + 30
        batch["errors"] = {
            "object": "list",
            "data": errors
            if errors is not None
            else [
                {"code": "invalid_request", "message": "Model not found", "param": "body.model", "line": 1}
            ],
        }
    elif status == "expired":
        batch["expired_at"] = created + 24 * HOUR
    elif status in ("cancelling", "cancelled"):
        batch["cancelling_at"] = created + 900
        if status == "cancelled":
            batch["cancelled_at"] = created + 960
    if status in ("completed", "expired", "cancelled"):
        batch["output_file_id"] = f"file-out{n:04d}Xyz"
        if failed:
            batch["error_file_id"] = f"file-err{n:04d}Xyz"
    if usage and status not in ("validating", "failed") and batch["request_counts"]:
        done_requests = batch["request_counts"]["completed"]
        batch["usage"] = {
            "input_tokens": 1000 * done_requests,
            "input_tokens_details": {"cached_tokens": 250 * done_requests},
            "output_tokens": 400 * done_requests,
            "output_tokens_details": {"reasoning_tokens": 100 * done_requests},
            "total_tokens": 1400 * done_requests,
        }
    batch.update(extra)
    return batch


def make_batches(account: str = "sim", *objects: dict[str, Any]) -> list[dict[str, Any]]:
    store_batches(account, list(objects))
    return list(objects)
