"""The simulated OpenAI upstream, exercised over real sockets (no Django needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator

from batches.simulator import (
    MAX_CONTENT_LINES,
    STATUSES,
    USAGE_CUTOFF,
    ApiError,
    Fault,
    SimClock,
    Simulator,
    SimulatorServer,
    mask_key,
)

pytest_plugins = ["tests.sim_fixtures"]  # Also listed by the project conftest; harmless twice.
MakeSimServer = Callable[..., SimulatorServer]

KEY = "sk-sim-local"
REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = Path(__file__).resolve().parents[2] / "shared/openai/batches-openapi.yaml"
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


# -- helpers ---------------------------------------------------------------------------------------


class Client:
    """A keep-alive session against one simulator server, authenticated like the OpenAI SDK."""

    def __init__(self, server: SimulatorServer, key: str | None = KEY) -> None:
        self.url = server.url
        self.root = server.root_url
        self.session = requests.Session()
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.post(self.url + path, **kwargs)

    def control(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, f"{self.root}/_sim{path}", json=body, timeout=10)

    def walk(self, limit: int | None) -> tuple[list[str], list[dict[str, Any]]]:
        """Every batch id via `after` cursors (next cursor = last id in data, as the SDK does)."""
        ids: list[str] = []
        pages: list[dict[str, Any]] = []
        params: dict[str, Any] = {} if limit is None else {"limit": limit}
        while True:
            page = self.get("/batches", params=params).json()
            pages.append(page)
            ids += [batch["id"] for batch in page["data"]]
            if not page["has_more"] or not page["data"]:
                return ids, pages
            params["after"] = page["data"][-1]["id"]


@pytest.fixture
def client(sim_server: SimulatorServer) -> Iterator[Client]:
    api = Client(sim_server)
    yield api
    api.session.close()


def all_batches(simulator: Simulator) -> list[dict[str, Any]]:
    return [simulator.get_batch(batch_id) for batch_id in simulator.batch_ids()]


def first(simulator: Simulator, **fields: Any) -> dict[str, Any]:
    for batch in all_batches(simulator):
        if all(batch[name] == value for name, value in fields.items()):
            return batch
    raise AssertionError(f"no batch with {fields}")


def jsonl(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


# -- schema ----------------------------------------------------------------------------------------


def relax_optional(schema: Any) -> Any:
    """Let every property that is not `required` also be null.

    The one documented relaxation: the spec types timestamps, file ids, usage, etc. as non-nullable,
    while its own examples and the SDK return null for absent ones.
    """
    if isinstance(schema, list):
        return [relax_optional(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    relaxed = {key: relax_optional(value) for key, value in schema.items()}
    properties = relaxed.get("properties")
    if isinstance(properties, dict):
        required = set(relaxed.get("required", []))
        relaxed["properties"] = {
            name: sub if name in required else {"anyOf": [sub, {"type": "null"}]}
            for name, sub in properties.items()
        }
    return relaxed


@cache
def spec_components() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip(f"official spec not found at {SPEC_PATH}")
    spec = yaml.safe_load(SPEC_PATH.read_text())
    return relax_optional(spec["components"])


@cache
def validator(name: str) -> Draft202012Validator:
    # Refs in the spec are `#/components/schemas/...`: embedding the components in the root schema
    # makes them resolve as written.
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/components/schemas/{name}",
        "components": spec_components(),
    }
    Draft202012Validator.check_schema(root)
    return Draft202012Validator(root)


def assert_valid(name: str, instance: Any) -> None:
    errors = sorted(validator(name).iter_errors(instance), key=str)
    assert not errors, f"{name} invalid: {[e.message for e in errors[:5]]}"


def test_relaxation_allows_null_only_in_optional_fields(simulator: Simulator) -> None:
    batch = first(simulator, status="completed")
    assert_valid("Batch", {**batch, "in_progress_at": None, "usage": None, "model": None})
    for field in ("status", "created_at", "id", "input_file_id"):
        assert not validator("Batch").is_valid({**batch, field: None}), field
    missing_status = {k: v for k, v in batch.items() if k != "status"}
    assert not validator("Batch").is_valid(missing_status)
    assert not validator("Batch").is_valid({**batch, "status": "paused"})
    assert not validator("ErrorResponse").is_valid({"error": {"message": None, "type": "x", "param": None}})


def test_list_page_matches_schema(client: Client) -> None:
    response = client.get("/batches", params={"limit": 5})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    page = response.json()
    assert_valid("ListBatchesResponse", page)
    assert page["object"] == "list"
    assert len(page["data"]) == 5
    assert page["first_id"] == page["data"][0]["id"]
    assert page["last_id"] == page["data"][-1]["id"]
    assert page["has_more"] is True


def test_batches_of_every_status_match_schema_with_all_fields(client: Client) -> None:
    batch_properties = set(spec_components()["schemas"]["Batch"]["properties"])
    _, pages = client.walk(100)
    batches = [batch for page in pages for batch in page["data"]]
    assert len(batches) == 300
    for batch in batches:
        assert_valid("Batch", batch)
        assert set(batch) == batch_properties  # Every field present, absent ones as explicit null.
        assert batch["object"] == "batch"
        assert batch["completion_window"] == "24h"
        assert batch["expires_at"] == batch["created_at"] + 86_400
    by_status = Counter(batch["status"] for batch in batches)
    assert set(by_status) == set(STATUSES)
    assert any(batch["usage"] is None and batch["created_at"] < USAGE_CUTOFF for batch in batches)
    failed = [batch for batch in batches if batch["status"] == "failed"]
    assert all(batch["errors"]["object"] == "list" and batch["errors"]["data"] for batch in failed)
    assert any(len(batch["errors"]["data"]) > 1 for batch in failed)
    assert any(error["line"] for batch in failed for error in batch["errors"]["data"])


def test_cancel_response_matches_schema(client: Client, simulator: Simulator) -> None:
    batch = simulator.create_batch(status="in_progress", total=50)
    response = client.post(f"/batches/{batch['id']}/cancel")
    assert response.status_code == 200
    assert_valid("Batch", response.json())
    assert response.json()["status"] == "cancelling"


def test_file_objects_match_schema(client: Client, simulator: Simulator) -> None:
    batch = first(simulator, status="expired")
    for file_id, purpose in (
        (batch["input_file_id"], "batch"),
        (batch["output_file_id"], "batch_output"),
        (batch["error_file_id"], "batch_output"),
    ):
        response = client.get(f"/files/{file_id}")
        assert response.status_code == 200
        file = response.json()
        assert_valid("OpenAIFile", file)
        assert (file["id"], file["object"], file["purpose"]) == (file_id, "file", purpose)
        assert file["status"] == "processed" and file["status_details"] is None
        assert file["bytes"] > 0


def test_error_envelopes_match_schema(sim_server: SimulatorServer, simulator: Simulator) -> None:
    authed, anonymous, wrong = Client(sim_server), Client(sim_server, None), Client(sim_server, "sk-wrong")
    completed = first(simulator, status="completed")
    simulator.add_fault(Fault("status", path="^/files/", status=429))
    responses = {
        401: [anonymous.get("/batches"), wrong.get("/batches")],
        404: [
            authed.get("/batches/batch_nope"),
            authed.get("/nope"),
            authed.post(f"/batches/{completed['id']}"),
        ],
        409: [authed.post(f"/batches/{completed['id']}/cancel")],
        429: [authed.get("/files/file-x")],
        400: [authed.get("/batches?limit=0"), authed.get("/batches?after=batch_nope")],
    }
    for status, answers in responses.items():
        for response in answers:
            assert response.status_code == status, response.text
            assert response.headers["content-type"] == "application/json"
            assert_valid("ErrorResponse", response.json())


# -- lifecycle -------------------------------------------------------------------------------------


def test_in_progress_batch_progresses_to_finalizing_then_completed(
    client: Client, simulator: Simulator, sim_clock: SimClock
) -> None:
    sim_clock.freeze()
    batch = simulator.create_batch(
        status="in_progress", total=100, failed=4, in_progress_seconds=600, finalizing_seconds=60
    )
    path = f"/batches/{batch['id']}"
    assert batch["request_counts"] == {"total": 100, "completed": 0, "failed": 0}
    assert batch["in_progress_at"] == batch["created_at"]
    sim_clock.advance(300)
    halfway = client.get(path).json()
    assert halfway["status"] == "in_progress"
    assert halfway["request_counts"]["completed"] + halfway["request_counts"]["failed"] == 50
    sim_clock.advance(301)
    finalizing = client.get(path).json()
    assert finalizing["status"] == "finalizing"
    assert finalizing["finalizing_at"] == batch["created_at"] + 600
    assert finalizing["request_counts"] == {"total": 100, "completed": 96, "failed": 4}
    assert finalizing["output_file_id"] is None
    sim_clock.advance(60)
    done = client.get(path).json()
    assert done["status"] == "completed"
    assert done["completed_at"] == batch["created_at"] + 660
    assert done["output_file_id"] and done["error_file_id"]
    assert done["usage"]["total_tokens"] > 0


def test_seeded_active_batches_progress_and_finish_within_the_hour(
    simulator: Simulator, sim_clock: SimClock
) -> None:
    active = [b["id"] for b in all_batches(simulator) if b["status"] in {"in_progress", "validating"}]
    assert len(active) >= 3
    last: dict[str, int] = {}
    grew = set()
    for _ in range(120):
        sim_clock.advance(30)
        for batch_id in active:
            batch = simulator.get_batch(batch_id)
            done = batch["request_counts"]["completed"] + batch["request_counts"]["failed"]
            assert done >= last.get(batch_id, 0)
            if done > last.get(batch_id, 0) and batch["status"] == "in_progress":
                grew.add(batch_id)
            last[batch_id] = done
    assert grew
    final = {simulator.get_batch(batch_id)["status"] for batch_id in active}
    assert final <= {"completed", "failed"}


def test_cancel_goes_through_cancelling_to_cancelled_with_partial_output(
    client: Client, simulator: Simulator, sim_clock: SimClock
) -> None:
    sim_clock.freeze()
    batch = simulator.create_batch(status="in_progress", total=200, progress=0.3, in_progress_seconds=600)
    sim_clock.advance(60)
    cancelling = client.post(f"/batches/{batch['id']}/cancel").json()
    assert cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"] == int(sim_clock.now())
    assert cancelling["cancelled_at"] is None and cancelling["output_file_id"] is None
    counts = cancelling["request_counts"]
    assert 0 < counts["completed"] < 200
    sim_clock.advance(4.5)
    assert client.get(f"/batches/{batch['id']}").json()["status"] == "cancelling"
    sim_clock.advance(1)
    cancelled = client.get(f"/batches/{batch['id']}").json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] == int(sim_clock.now() - 0.5)
    assert cancelled["request_counts"] == counts  # Frozen at the moment of the cancel.
    lines = jsonl(client.get(f"/files/{cancelled['output_file_id']}/content"))
    assert len(lines) == counts["completed"]


def test_cancel_of_cancelling_batch_returns_it_unchanged(client: Client, simulator: Simulator) -> None:
    batch = simulator.create_batch(status="in_progress")
    first_answer = client.post(f"/batches/{batch['id']}/cancel").json()
    second = client.post(f"/batches/{batch['id']}/cancel")
    assert second.status_code == 200
    assert second.json() == first_answer


@pytest.mark.parametrize("status", ["completed", "failed", "expired", "cancelled"])
def test_cancel_of_terminal_batch_is_409(client: Client, simulator: Simulator, status: str) -> None:
    batch = first(simulator, status=status)
    response = client.post(f"/batches/{batch['id']}/cancel")
    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "message": f"Cannot cancel a batch with status '{status}'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert simulator.get_batch(batch["id"]) == batch


def test_expired_batches_keep_partial_output_and_list_unfinished_requests(
    client: Client, simulator: Simulator
) -> None:
    expired = [b for b in all_batches(simulator) if b["status"] == "expired"]
    assert expired
    for batch in expired:
        counts = batch["request_counts"]
        assert batch["expired_at"] >= batch["expires_at"]
        assert counts["completed"] + counts["failed"] < counts["total"]
    batch = min(expired, key=lambda b: b["request_counts"]["total"])
    counts = batch["request_counts"]
    output = jsonl(client.get(f"/files/{batch['output_file_id']}/content"))
    assert len(output) == min(counts["completed"], MAX_CONTENT_LINES)
    errors = jsonl(client.get(f"/files/{batch['error_file_id']}/content"))
    expired_lines = [line for line in errors if line["error"] and line["error"]["code"] == "batch_expired"]
    unfinished = counts["total"] - counts["completed"] - counts["failed"]
    assert len(expired_lines) == min(unfinished, MAX_CONTENT_LINES)


def test_validating_batch_can_fail_validation(simulator: Simulator, sim_clock: SimClock) -> None:
    batch = simulator.create_batch(status="validating", outcome="failed", validating_seconds=30)
    assert batch["status"] == "validating"
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    sim_clock.advance(31)
    failed = simulator.get_batch(batch["id"])
    assert failed["status"] == "failed"
    assert failed["failed_at"] == batch["created_at"] + 30
    assert failed["errors"]["data"]
    assert {"code", "message", "param", "line"} <= set(failed["errors"]["data"][0])
    assert failed["output_file_id"] is None and failed["error_file_id"] is None


def test_completed_batch_where_every_request_failed_has_only_an_error_file(simulator: Simulator) -> None:
    batch = simulator.create_batch(status="completed", total=10, failed=10)
    assert batch["status"] == "completed"
    assert batch["output_file_id"] is None
    assert batch["error_file_id"]
    assert batch["request_counts"] == {"total": 10, "completed": 0, "failed": 10}


def test_cancel_outside_is_not_an_api_request(client: Client, simulator: Simulator) -> None:
    batch = simulator.create_batch(status="in_progress")
    assert simulator.cancel_outside(batch["id"])["status"] == "cancelling"
    assert simulator.total_requests() == 0
    with pytest.raises(ApiError) as refused:
        simulator.cancel_outside(first(simulator, status="completed")["id"])
    assert refused.value.status == 409


def test_world_is_deterministic_and_id_prefix_separates_accounts() -> None:
    clock = SimClock()
    clock.freeze()
    one, two = Simulator(batches=50, seed=3, clock=clock), Simulator(batches=50, seed=3, clock=clock)
    assert all_batches(one) == all_batches(two)
    other = Simulator(batches=50, seed=3, clock=clock, id_prefix="research")
    assert not set(one.batch_ids()) & set(other.batch_ids())
    for batch in all_batches(one):
        assert batch["id"].startswith("batch_") and len(batch["id"]) >= 30 and batch["id"][6:].isalnum()
        assert batch["input_file_id"].startswith("file-") and len(batch["input_file_id"]) >= 27


def test_seeded_data_is_realistic(simulator: Simulator) -> None:
    batches = all_batches(simulator)
    now = simulator.now()
    recent = [b for b in batches if b["created_at"] >= USAGE_CUTOFF]
    assert all(b["usage"] is not None for b in recent)
    assert all(b["created_at"] > now - 31 * 86_400 for b in recent)
    assert [b["created_at"] for b in batches] == sorted((b["created_at"] for b in batches), reverse=True)
    models = {b["model"] for b in batches}
    assert {"gpt-4o-mini", "gpt-4.1", "gpt-5-mini", "o4-mini", "text-embedding-3-small"} <= models
    endpoints = {b["endpoint"] for b in batches}
    assert {"/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/moderations"} <= endpoints
    reasoning = [
        b for b in recent if b["model"] in {"o4-mini", "gpt-5-mini"} and b["request_counts"]["completed"]
    ]
    assert reasoning and all(b["usage"]["output_tokens_details"]["reasoning_tokens"] > 0 for b in reasoning)
    with_meta = [b for b in batches if b["metadata"]]
    assert len(with_meta) > len(batches) * 0.7
    assert all({"description", "owner", "ticket"} <= set(b["metadata"]) for b in with_meta)
    assert any(b["metadata"] is None for b in batches) and any(b["metadata"] == {} for b in batches)


def test_arrivals_appear_at_the_top_as_time_passes() -> None:
    clock = SimClock()
    clock.freeze()
    sim = Simulator(batches=20, seed=2, clock=clock, arrival_interval=60)
    before = sim.batch_ids()
    clock.advance(181)
    after = sim.batch_ids()
    assert len(after) == 23 and after[3:] == before
    arrived = [sim.get_batch(batch_id) for batch_id in after[:3]]
    assert [b["created_at"] for b in arrived] == sorted((b["created_at"] for b in arrived), reverse=True)
    assert all(b["status"] in {"validating", "in_progress", "failed"} for b in arrived)


def test_created_batch_goes_to_the_top(client: Client, simulator: Simulator) -> None:
    batch = simulator.create_batch(status="finalizing", total=7)
    page = client.get("/batches", params={"limit": 1}).json()
    assert page["data"][0]["id"] == batch["id"]
    assert page["data"][0]["status"] == "finalizing"
    with pytest.raises(ValueError):
        simulator.create_batch(status="expired")


# -- pagination ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, None, 100])
def test_after_cursors_walk_every_batch_once_newest_first(
    client: Client, simulator: Simulator, limit: int | None
) -> None:
    ids, pages = client.walk(limit)
    assert ids == simulator.batch_ids()
    assert len(ids) == len(set(ids)) == 300
    assert all(len(page["data"]) == (limit or 20) for page in pages[:-1])
    assert pages[-1]["has_more"] is False and all(page["has_more"] for page in pages[:-1])


@pytest.mark.parametrize(
    ("limit", "code"), [(0, "integer_below_min_value"), (101, "integer_above_max_value")]
)
def test_limit_out_of_range_is_400(client: Client, limit: int, code: str) -> None:
    response = client.get("/batches", params={"limit": limit})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "limit", code)


def test_unknown_after_cursor_is_400(client: Client) -> None:
    response = client.get("/batches", params={"after": "batch_unknown"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"


def test_page_after_the_last_batch_is_empty(client: Client, simulator: Simulator) -> None:
    page = client.get("/batches", params={"after": simulator.batch_ids()[-1]}).json()
    assert page == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


# -- auth ------------------------------------------------------------------------------------------


def test_missing_key_is_401(sim_server: SimulatorServer) -> None:
    response = Client(sim_server, None).get("/batches")
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": MISSING_KEY_MESSAGE,
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_wrong_key_is_401_and_never_echoed(sim_server: SimulatorServer) -> None:
    wrong = "sk-proj-thisIsNotTheRightKey1234"
    response = Client(sim_server, wrong).get("/batches")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith(f"Incorrect API key provided: {mask_key(wrong)}.")
    assert wrong not in response.text and "thisIsNotTheRightKey" not in response.text
    assert mask_key("sk-wrong") == "sk-wr***ng"


def test_azure_api_key_header_and_prefix_work(sim_server: SimulatorServer) -> None:
    response = requests.get(
        f"{sim_server.root_url}/openai/v1/batches",
        params={"limit": 2, "api-version": "preview"},
        headers={"api-key": KEY},
        timeout=10,
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


def test_any_configured_key_is_accepted(make_sim_server: MakeSimServer) -> None:
    server = make_sim_server(batches=5, api_keys=["sk-one", "sk-two"])
    assert Client(server, "sk-two").get("/batches").status_code == 200
    assert Client(server, KEY).get("/batches").status_code == 401


def test_every_response_has_a_request_id(sim_server: SimulatorServer, client: Client) -> None:
    for response in (client.get("/batches"), Client(sim_server, None).get("/batches"), client.get("/x")):
        assert response.headers["x-request-id"].startswith("req_")
        assert len(response.headers["x-request-id"]) == 36


# -- files -----------------------------------------------------------------------------------------


def test_output_content_streams_jsonl_lines(client: Client, simulator: Simulator) -> None:
    batch = next(
        b
        for b in all_batches(simulator)
        if b["status"] == "completed" and b["error_file_id"] and 50 < b["request_counts"]["completed"] < 3000
    )
    meta = client.get(f"/files/{batch['output_file_id']}").json()
    response = client.get(f"/files/{batch['output_file_id']}/content", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert int(response.headers["content-length"]) == meta["bytes"]
    lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == batch["request_counts"]["completed"]
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["custom_id"].startswith("request-")
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["request_id"].startswith("req_") and line["response"]["body"]
    errors = jsonl(client.get(f"/files/{batch['error_file_id']}/content"))
    assert len(errors) == batch["request_counts"]["failed"]
    custom_ids = {line["custom_id"] for line in lines} | {line["custom_id"] for line in errors}
    assert len(custom_ids) == len(lines) + len(errors)
    for line in errors:
        assert (line["response"] is None) != (line["error"] is None)
        if line["response"]:
            assert line["response"]["status_code"] >= 400 and "error" in line["response"]["body"]


def test_input_file_holds_request_lines(client: Client, simulator: Simulator) -> None:
    batch = first(simulator, status="completed")
    lines = jsonl(client.get(f"/files/{batch['input_file_id']}/content"))
    assert len(lines) == min(batch["request_counts"]["total"], MAX_CONTENT_LINES)
    assert lines[0]["custom_id"] == "request-1"
    assert all(line["method"] == "POST" and line["url"] == batch["endpoint"] for line in lines)
    assert client.get(f"/files/{batch['input_file_id']}").json()["purpose"] == "batch"


def test_files_are_404_until_written(make_sim_server: MakeSimServer) -> None:
    # Ids depend only on seed and creation order, so a twin simulator reveals the future file id.
    twin = Simulator(batches=5, seed=9, clock=SimClock())
    server = make_sim_server(batches=5, seed=9, clock=SimClock())
    api = Client(server)
    assert api.get("/files/file-doesnotexist").json()["error"] == {
        "message": "No such File object: file-doesnotexist",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    running = server.simulator.create_batch(status="in_progress", total=5, in_progress_seconds=60)
    twin.create_batch(status="in_progress", total=5, in_progress_seconds=60)
    twin.clock.advance(3600)
    output_file_id = twin.get_batch(running["id"])["output_file_id"]
    assert output_file_id and running["output_file_id"] is None
    assert api.get(f"/files/{output_file_id}").status_code == 404
    assert api.get(f"/files/{output_file_id}/content").status_code == 404
    assert api.get(f"/files/{running['input_file_id']}/content").status_code == 200
    server.simulator.clock.advance(3600)
    assert api.get(f"/files/{output_file_id}").json()["purpose"] == "batch_output"
    assert len(jsonl(api.get(f"/files/{output_file_id}/content"))) == 5


# -- faults ----------------------------------------------------------------------------------------


def test_429_fault_carries_retry_after_headers(client: Client, simulator: Simulator) -> None:
    simulator.add_fault(Fault("status", status=429, retry_after=1.5))
    response = client.get("/batches")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "invalid_request_error"), (403, "invalid_request_error"), (404, "invalid_request_error"),
     (500, "server_error"), (502, "cf_bad_gateway"), (503, "server_error")],
)  # fmt: skip
def test_status_faults_answer_with_error_envelopes(
    client: Client, simulator: Simulator, status: int, error_type: str
) -> None:
    simulator.add_fault(Fault("status", status=status))
    response = client.get("/batches")
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"]
    assert {"message", "type", "param", "code"} == set(error)


def test_malformed_fault_answers_200_with_broken_json(client: Client, simulator: Simulator) -> None:
    simulator.add_fault(Fault("malformed", path="^/batches$", count=1))
    response = client.get("/batches")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert client.get("/batches").json()["object"] == "list"


def test_timeout_fault_holds_the_request_past_the_client_timeout(
    client: Client, simulator: Simulator
) -> None:
    simulator.add_fault(Fault("timeout", seconds=5, count=1))
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get("/batches", timeout=0.3)
    assert client.get("/batches").status_code == 200


def test_reset_fault_drops_the_connection(client: Client, simulator: Simulator) -> None:
    simulator.add_fault(Fault("reset", method="GET", count=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        client.get("/batches")
    assert client.get("/batches").status_code == 200


def test_empty_page_fault_only_hits_the_list(client: Client, simulator: Simulator) -> None:
    fault = simulator.add_fault(Fault("empty_page"))
    batch_id = simulator.batch_ids()[0]
    assert client.get(f"/batches/{batch_id}").json()["id"] == batch_id
    assert client.get("/batches").json() == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": True,
    }
    assert fault.hits == 1


def test_count_limits_a_fault_then_it_turns_inert(client: Client, simulator: Simulator) -> None:
    fault = simulator.add_fault(Fault("status", status=500, count=2))
    assert [client.get("/batches").status_code for _ in range(3)] == [500, 500, 200]
    assert fault.hits == 2 and fault.active is False


def test_faults_match_by_path_and_method(client: Client, simulator: Simulator) -> None:
    simulator.add_fault(Fault("status", status=503, path=r"^/batches/[^/]+/cancel$", method="POST"))
    batch = simulator.create_batch(status="in_progress")
    assert client.get(f"/batches/{batch['id']}").status_code == 200
    assert client.get("/batches").status_code == 200
    assert client.post(f"/batches/{batch['id']}/cancel").status_code == 503
    assert simulator.get_batch(batch["id"])["status"] == "in_progress"


def test_fault_rate_is_a_seeded_probability(client: Client, simulator: Simulator) -> None:
    never = simulator.add_fault(Fault("status", status=500, rate=0.0))
    sometimes = simulator.add_fault(Fault("status", status=502, rate=0.5))
    codes = Counter(client.get("/batches", params={"limit": 1}).status_code for _ in range(60))
    assert never.hits == 0
    assert codes[502] == sometimes.hits and 10 < sometimes.hits < 50
    assert codes[200] == 60 - sometimes.hits


def test_latency_fault_delays_a_normal_answer_and_applies_before_auth(
    sim_server: SimulatorServer, simulator: Simulator
) -> None:
    simulator.add_fault(Fault("latency", seconds=0.3, count=1))
    started = time.monotonic()
    response = Client(sim_server).get("/batches")
    assert response.status_code == 200 and time.monotonic() - started >= 0.3
    simulator.add_fault(Fault("status", status=503, count=1))
    assert Client(sim_server, None).get("/batches").status_code == 503


def test_stats_count_api_requests_by_route(
    sim_server: SimulatorServer, client: Client, simulator: Simulator
) -> None:
    batch = first(simulator, status="completed")
    simulator.add_fault(Fault("status", status=500, path="^/batches$", count=1))
    client.get("/batches")
    client.get("/batches")
    Client(sim_server, None).get("/batches")
    client.get(f"/batches/{batch['id']}")
    client.post(f"/batches/{batch['id']}/cancel")
    client.get(f"/files/{batch['output_file_id']}")
    client.get(f"/files/{batch['output_file_id']}/content")
    simulator.get_batch(batch["id"])  # Python access is not an API request.
    assert simulator.stats() == {
        "GET /batches": 3,
        "GET /batches/{id}": 1,
        "POST /batches/{id}/cancel": 1,
        "GET /files/{id}": 1,
        "GET /files/{id}/content": 1,
    }
    assert simulator.total_requests() == 7
    simulator.reset_stats()
    assert simulator.stats() == {} and simulator.total_requests() == 0


def test_control_endpoints_drive_the_simulator_and_are_not_counted(
    client: Client, simulator: Simulator, sim_clock: SimClock
) -> None:
    sim_clock.freeze()
    client.get("/batches")
    assert client.control("GET", "/stats").json() == {"stats": {"GET /batches": 1}, "total": 1}
    assert client.control("POST", "/stats/reset").status_code == 200
    fault = client.control("POST", "/faults", {"kind": "status", "status": 429, "count": 1}).json()
    assert fault["kind"] == "status" and fault["active"] is True
    assert client.get("/batches").status_code == 429
    client.control("POST", "/faults", {"kind": "status", "status": 500})
    assert client.control("DELETE", "/faults").status_code == 200
    assert client.get("/batches").status_code == 200
    assert client.control("POST", "/faults", {"kind": "nonsense"}).status_code == 400
    before = sim_clock.now()
    assert client.control("POST", "/clock", {"advance": 90}).json()["now"] == before + 90
    assert client.control("POST", "/clock", {"advance": -1}).status_code == 400
    created = client.control("POST", "/batches", {"status": "in_progress", "total": 100}).json()
    assert created["status"] == "in_progress" and simulator.batch_ids()[0] == created["id"]
    assert client.control("POST", "/batches", {"bogus": 1}).status_code == 400
    cancelled = client.control("POST", f"/batches/{created['id']}/cancel-outside").json()
    assert cancelled["status"] == "cancelling"
    assert client.control("POST", "/batches/batch_nope/cancel-outside").status_code == 404
    assert simulator.stats() == {"GET /batches": 2}


def test_concurrent_clients_are_served_consistently(
    sim_server: SimulatorServer, simulator: Simulator, sim_clock: SimClock
) -> None:
    running = [simulator.create_batch(status="in_progress")["id"] for _ in range(20)]
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def work(worker: int) -> None:
        api = Client(sim_server)
        for step in range(25):
            if step % 5 == 0:
                answer = api.post(f"/batches/{running[(worker + step) % 20]}/cancel")
            elif step % 2:
                answer = api.get("/batches", params={"limit": 50})
            else:
                answer = api.get(f"/batches/{running[step % 20]}")
            with lock:
                statuses[answer.status_code] += 1
        api.session.close()

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    sim_clock.advance(30)
    for thread in threads:
        thread.join(30)
    # A cancel that lands after the clock jump meets a cancelled batch: 409, as upstream.
    assert set(statuses) <= {200, 409} and statuses[409] <= 40
    assert simulator.total_requests() == 200
    assert {simulator.get_batch(batch_id)["status"] for batch_id in running} <= {"cancelling", "cancelled"}


# -- scale -----------------------------------------------------------------------------------------


def test_ten_thousand_batches_page_through_completely(make_sim_server: MakeSimServer) -> None:
    server = make_sim_server(batches=10_000, seed=3)
    api = Client(server)
    ids, pages = api.walk(100)
    assert len(ids) == len(set(ids)) == 10_000
    assert len(pages) == 100
    assert server.simulator.stats() == {"GET /batches": 100}


# -- management command ----------------------------------------------------------------------------


def test_command_parses_its_arguments() -> None:
    from batches.management.commands.simulate_upstream import Command, build_simulator

    parser = Command().create_parser("manage.py", "simulate_upstream")
    options = vars(parser.parse_args(["--batches", "40", "--api-key", "sk-a", "--api-key", "sk-b"]))
    assert (options["host"], options["port"], options["seed"]) == ("127.0.0.1", 8001, 1)
    assert (options["cancel_delay"], options["arrival_interval"], options["id_prefix"]) == (10.0, 60.0, "")
    sim = build_simulator(options)
    assert len(sim) == 40 and sim.api_keys == {"sk-a", "sk-b"}
    assert "simulated OpenAI Batch API" in parser.format_help()


def test_command_serves_until_stopped() -> None:
    from batches.management.commands.simulate_upstream import serve_until_stopped

    server = SimulatorServer(Simulator(batches=10))
    stop = threading.Event()
    output: list[str] = []
    thread = threading.Thread(target=serve_until_stopped, args=(server, stop, output.append))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(output) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.url in output[0]
        assert f"OPENAI_BASE_URL={server.url} OPENAI_API_KEY={KEY}" in output[1]
        assert Client(server).get("/batches").status_code == 200
    finally:
        stop.set()
        thread.join(5)
    assert output[-1] == "Simulator stopped."


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_command_exits_cleanly_on_signal(signum: int) -> None:
    # Settings are configured bare so the command runs whether or not the project settings exist.
    script = (
        "from django.conf import settings; settings.configure();"
        "from batches.management.commands.simulate_upstream import Command;"
        "Command().run_from_argv(['manage.py', 'simulate_upstream', '--skip-checks', '--port', '0',"
        " '--batches', '20', '--arrival-interval', '0'])"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        url = first_line.rsplit(" at ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), first_line
        response = requests.get(f"{url}/batches", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
        assert response.status_code == 200
        process.send_signal(signum)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Simulator stopped." in out
    assert "Traceback" not in err
