"""The upstream client, against a mocked HTTP layer (`responses`): no network, no Django."""

from __future__ import annotations

import email.utils
import gzip
import io
import json
import logging
import pickle
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from batches.accounts import Account
from batches.client import (
    BATCH_ID_RE,
    FILE_ID_RE,
    TITLES,
    BatchPage,
    FileContent,
    InvalidIdError,
    UpstreamClient,
    UpstreamError,
    api_base_url,
    longest_call_seconds,
    redact,
    validate_batch_id,
    validate_file_id,
)

KEY = "sk-test-SUPERSECRET-0123456789"
BASE = "https://api.example.test/v1"
BATCHES = f"{BASE}/batches"


def batch(batch_id: str = "batch_abc123", status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-input1",
        "completion_window": "24h",
        "status": status,
        "created_at": 1711471533,
        **extra,
    }


def page(ids: list[str], *, has_more: bool, last_id: str | None = None) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [batch(i) for i in ids],
        "first_id": ids[0] if ids else None,
        "last_id": last_id if last_id is not None else (ids[-1] if ids else None),
        "has_more": has_more,
    }


def error_body(
    message: str, type_: str = "invalid_request_error", code: Any = None, param: Any = None
) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "code": code, "param": param}})


@pytest.fixture
def account() -> Account:
    return Account(name="default", api_key=KEY, base_url=BASE)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(account: Account, sleeps: list[float]) -> UpstreamClient:
    return UpstreamClient(account, sleep=sleeps.append, random=lambda: 1.0)


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# --- headers and URLs ------------------------------------------------------------------------------


def test_openai_account_sends_bearer_organization_project_and_json_headers(
    rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    account = Account(name="default", api_key=KEY, base_url=BASE, organization="org-1", project="proj_1")
    rsps.get(f"{BATCHES}/batch_abc123", json=batch())
    UpstreamClient(account, sleep=sleeps.append).retrieve_batch("batch_abc123")

    headers = rsps.calls[0].request.headers
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["OpenAI-Organization"] == "org-1"
    assert headers["OpenAI-Project"] == "proj_1"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("batch-dashboard/")
    assert "api-key" not in headers


def test_openai_account_without_org_or_project_sends_neither(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", json=batch())
    client.retrieve_batch("batch_abc123")

    headers = rsps.calls[0].request.headers
    assert "OpenAI-Organization" not in headers
    assert "OpenAI-Project" not in headers


def test_azure_account_sends_api_key_header_and_no_authorization(rsps: responses.RequestsMock) -> None:
    azure = Account(
        name="azure-eu",
        api_key="0123456789abcdef0123456789abcdef",
        base_url="https://res.openai.azure.com/openai/v1",
        kind="azure",
    )
    rsps.get("https://res.openai.azure.com/openai/v1/batches/batch_abc123", json=batch())
    UpstreamClient(azure).retrieve_batch("batch_abc123")

    headers = rsps.calls[0].request.headers
    assert headers["api-key"] == "0123456789abcdef0123456789abcdef"
    assert "Authorization" not in headers


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("https://host", "https://host/v1"),
        ("https://host/", "https://host/v1"),
        ("http://127.0.0.1:8001", "http://127.0.0.1:8001/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("https://api.openai.com/v1/", "https://api.openai.com/v1"),
        ("https://res.openai.azure.com/openai/v1", "https://res.openai.azure.com/openai/v1"),
        ("https://proxy.test/openai", "https://proxy.test/openai/v1"),
    ],
)
def test_base_url_gets_exactly_one_v1(configured: str, expected: str) -> None:
    assert api_base_url(configured) == expected


def test_base_url_without_v1_requests_v1_batches(rsps: responses.RequestsMock) -> None:
    rsps.get("https://host/v1/batches", json=page(["batch_a"], has_more=False))
    UpstreamClient(Account(name="sim", api_key=KEY, base_url="https://host")).list_batches()

    assert rsps.calls[0].request.url == "https://host/v1/batches?limit=100"


def test_every_request_has_connect_and_read_timeouts(account: Account, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", json=batch())
    UpstreamClient(account, connect_timeout=2.0, read_timeout=9.0).retrieve_batch("batch_abc123")

    assert rsps.calls[0].request.req_kwargs["timeout"] == (2.0, 9.0)


def test_redirects_are_not_followed(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    # Following one would carry the key (an `api-key` header survives cross-host redirects) elsewhere.
    rsps.get(f"{BATCHES}/batch_abc123", status=302, headers={"Location": "https://evil.test/steal"})
    rsps.get("https://evil.test/steal", json=batch())

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert [call.request.url for call in rsps.calls] == [f"{BATCHES}/batch_abc123"]
    assert info.value.kind == "server"
    assert info.value.status == 302
    assert "redirect refused" in info.value.message


def test_client_and_factory_reprs_name_the_account_only(account: Account) -> None:
    client = UpstreamClient(account, max_retries=0)
    assert isinstance(client, UpstreamClient)
    assert "default" in repr(client)
    assert KEY not in repr(client)
    assert KEY not in repr(account)


# --- listing ---------------------------------------------------------------------------------------


def test_list_batches_sends_limit_and_after_and_returns_a_page(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "2", "after": "batch_prev"})],
        json=page(["batch_a", "batch_b"], has_more=True),
    )

    result = client.list_batches(after="batch_prev", limit=2)

    assert isinstance(result, BatchPage)
    assert [b["id"] for b in result.data] == ["batch_a", "batch_b"]
    assert result.has_more is True
    assert result.first_id == "batch_a"
    assert result.last_id == "batch_b"
    assert rsps.calls[0].request.method == "GET"


def test_list_batches_defaults_to_limit_100_and_no_after(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(BATCHES, match=[matchers.query_param_matcher({"limit": "100"})], json=page([], has_more=False))

    result = client.list_batches()

    assert result.data == []
    assert result.has_more is False
    assert result.first_id is None


def test_list_batches_is_lenient_about_missing_object_and_ids(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(BATCHES, json={"data": [batch("batch_a")], "has_more": False, "last_id": "../x"})

    result = client.list_batches()

    assert [b["id"] for b in result.data] == ["batch_a"]
    assert result.first_id is None
    assert result.last_id is None  # not a batch id, so not handed on


def test_iter_batches_follows_the_last_items_id_across_three_pages(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    # last_id deliberately wrong: the cursor is the last item's id, as in the SDK.
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "2"})],
        json=page(["batch_1", "batch_2"], has_more=True, last_id="batch_WRONG"),
    )
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "2", "after": "batch_2"})],
        json=page(["batch_3", "batch_4"], has_more=True, last_id="batch_WRONG"),
    )
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "2", "after": "batch_4"})],
        json=page(["batch_5"], has_more=False),
    )

    ids = [b["id"] for b in client.iter_batches(limit=2)]

    assert ids == ["batch_1", "batch_2", "batch_3", "batch_4", "batch_5"]
    assert len(rsps.calls) == 3


def test_iter_batches_starts_after_the_given_cursor(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "100", "after": "batch_start"})],
        json=page(["batch_9"], has_more=False),
    )

    assert [b["id"] for b in client.iter_batches(after="batch_start")] == ["batch_9"]


def test_iter_batches_stops_on_an_empty_page_that_claims_more(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "100"})],
        json=page(["batch_1"], has_more=True),
    )
    rsps.get(
        BATCHES,
        match=[matchers.query_param_matcher({"limit": "100", "after": "batch_1"})],
        json={"object": "list", "data": [], "has_more": True},
    )

    ids = [b["id"] for b in client.iter_batches()]

    assert ids == ["batch_1"]
    assert len(rsps.calls) == 2


def test_iter_batches_refuses_a_cursor_that_does_not_advance(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(BATCHES, json=page(["batch_1", "batch_2"], has_more=True))

    with pytest.raises(UpstreamError) as info:
        list(client.iter_batches())

    assert info.value.kind == "malformed"
    assert len(rsps.calls) == 2


@pytest.mark.parametrize("limit", [0, 101, -1, True, "10", 2.0])
def test_out_of_range_limit_is_refused_without_a_request(
    client: UpstreamClient, rsps: responses.RequestsMock, limit: Any
) -> None:
    with pytest.raises(ValueError, match="limit"):
        client.list_batches(limit=limit)
    with pytest.raises(ValueError, match="limit"):
        client.iter_batches(limit=limit)

    assert len(rsps.calls) == 0


# --- retrieve, cancel, files -----------------------------------------------------------------------


def test_retrieve_batch_returns_the_batch(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", json=batch(status="completed", output_file_id="file-out"))

    result = client.retrieve_batch("batch_abc123")

    assert result["status"] == "completed"
    assert result["output_file_id"] == "file-out"


def test_retrieve_batch_answered_with_another_batch_is_malformed(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", json=batch("batch_other"))

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.kind == "malformed"


def test_cancel_batch_posts_without_a_body(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.post(f"{BATCHES}/batch_abc123/cancel", json=batch(status="cancelling"))

    result = client.cancel_batch("batch_abc123")

    assert result["status"] == "cancelling"
    request = rsps.calls[0].request
    assert request.method == "POST"
    assert not request.body


def test_cancel_409_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.post(
        f"{BATCHES}/batch_abc123/cancel",
        status=409,
        body=error_body("Cannot cancel a batch with status 'completed'."),
        headers={"x-request-id": "req_409"},
    )

    with pytest.raises(UpstreamError) as info:
        client.cancel_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert sleeps == []
    assert info.value.kind == "conflict"
    assert info.value.message == "Cannot cancel a batch with status 'completed'."
    assert info.value.request_id == "req_409"


def test_cancel_429_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.post(
        f"{BATCHES}/batch_abc123/cancel",
        status=429,
        body=error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
        headers={"Retry-After": "1"},
    )

    with pytest.raises(UpstreamError) as info:
        client.cancel_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert sleeps == []
    assert info.value.kind == "rate_limited"
    assert info.value.retry_after == 1.0


def test_cancel_503_is_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BATCHES}/batch_abc123/cancel"
    rsps.post(url, status=503, body=error_body("overloaded", "server_error"))
    rsps.post(url, json=batch(status="cancelling"))

    assert client.cancel_batch("batch_abc123")["status"] == "cancelling"
    assert len(rsps.calls) == 2
    assert sleeps == [0.5]


def test_cancel_read_timeout_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    # The cancel may have been applied before the answer was lost.
    rsps.post(f"{BATCHES}/batch_abc123/cancel", body=requests.exceptions.ReadTimeout("read timed out"))

    with pytest.raises(UpstreamError) as info:
        client.cancel_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert sleeps == []
    assert info.value.kind == "timeout"


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (requests.exceptions.ConnectionError("refused"), "connection"),
        (requests.exceptions.ConnectTimeout("connect timed out"), "timeout"),
    ],
)
def test_cancel_connection_failures_are_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float], failure: Exception, kind: str
) -> None:
    url = f"{BATCHES}/batch_abc123/cancel"
    rsps.post(url, body=failure)
    rsps.post(url, json=batch(status="cancelling"))

    assert client.cancel_batch("batch_abc123")["status"] == "cancelling"
    assert len(rsps.calls) == 2
    assert sleeps == [0.5]


def test_retrieve_file_returns_the_file_object(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    file_object = {
        "id": "file-out1",
        "object": "file",
        "bytes": 120,
        "created_at": 1,
        "filename": "out.jsonl",
        "purpose": "batch_output",
    }
    rsps.get(f"{BASE}/files/file-out1", json=file_object)

    assert client.retrieve_file("file-out1") == file_object


def test_retrieve_file_without_the_requested_id_is_malformed(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(f"{BASE}/files/file-out1", json=["not", "an", "object"])

    with pytest.raises(UpstreamError) as info:
        client.retrieve_file("file-out1")

    assert info.value.kind == "malformed"


JSONL = b"".join(b'{"custom_id": "req-%d", "response": {"status_code": 200}}\n' % i for i in range(40))


def test_open_file_content_streams_the_body_in_chunks(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BASE}/files/file-out1/content",
        body=JSONL,
        content_type="application/jsonl",
        headers={"x-request-id": "req_file", "Content-Length": str(len(JSONL))},
    )

    with client.open_file_content("file-out1") as content:
        assert isinstance(content, FileContent)
        assert content.content_type == "application/jsonl"
        assert content.content_length == len(JSONL)
        assert content.request_id == "req_file"
        chunks = list(content.iter_bytes(chunk_size=256))

    assert rsps.calls[0].request.req_kwargs["stream"] is True
    assert len(chunks) == -(-len(JSONL) // 256)
    assert all(len(chunk) <= 256 for chunk in chunks)
    assert b"".join(chunks) == JSONL


def test_file_content_can_be_iterated_directly(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    packed = gzip.compress(JSONL)
    rsps.get(
        f"{BASE}/files/file-out1/content",
        body=packed,
        content_type=None,
        headers={"Content-Encoding": "gzip", "Content-Length": str(len(packed))},
    )

    content = client.open_file_content("file-out1")

    assert content.content_type == "application/octet-stream"
    assert content.content_length is None  # the encoded length is not what we yield
    assert b"".join(content) == JSONL


def test_open_file_content_retries_a_503_before_streaming(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BASE}/files/file-out1/content"
    rsps.get(url, status=503, body="<html>busy</html>")
    rsps.get(url, body=JSONL)

    with client.open_file_content("file-out1") as content:
        assert b"".join(content.iter_bytes()) == JSONL
    assert sleeps == [0.5]


def test_open_file_content_404_raises_not_found(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BASE}/files/file-gone/content",
        status=404,
        body=error_body("No such File object: file-gone", code=None, param="id"),
    )

    with pytest.raises(UpstreamError) as info:
        client.open_file_content("file-gone")

    assert info.value.kind == "not_found"
    assert info.value.param == "id"


class _BreakingRaw(io.RawIOBase):
    """A socket that delivers some bytes, then fails the way a real one does."""

    def __init__(self, data: bytes, failure: BaseException) -> None:
        self._data = io.BytesIO(data)
        self._failure = failure

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(len(buffer))
        if not chunk:
            raise self._failure
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (ConnectionResetError(f"reset while sending Bearer {KEY}"), "connection"),
        (TimeoutError(f"timed out; Bearer {KEY}"), "timeout"),
    ],
)
def test_a_stream_broken_midway_raises_upstream_error(
    client: UpstreamClient, rsps: responses.RequestsMock, failure: BaseException, kind: str
) -> None:
    raw = io.BufferedReader(_BreakingRaw(JSONL[:300], failure))
    rsps.get(f"{BASE}/files/file-out1/content", body=raw)  # type: ignore[arg-type]

    received: list[bytes] = []
    with pytest.raises(UpstreamError) as info, client.open_file_content("file-out1") as content:
        for chunk in content.iter_bytes(chunk_size=100):
            received.append(chunk)

    assert b"".join(received) == JSONL[:300]
    assert info.value.kind == kind
    assert_key_absent(info.value)


# --- error statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "bad_request"),
        (401, "auth"),
        (403, "permission"),
        (404, "not_found"),
        (409, "conflict"),
        (422, "unprocessable"),
        (429, "rate_limited"),
        (500, "server"),
        (502, "server"),
        (503, "server"),
        (418, "server"),
    ],
)
def test_error_status_becomes_upstream_error_with_every_field(
    client: UpstreamClient, rsps: responses.RequestsMock, status: int, kind: str
) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=status,
        body=error_body(f"failure {status}", "some_error_type", f"code_{status}", "batch_id"),
        headers={"x-request-id": f"req_{status}"},
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    error = info.value
    assert error.account == "default"
    assert error.kind == kind
    assert error.status == status
    assert error.error_type == "some_error_type"
    assert error.code == f"code_{status}"
    assert error.message == f"failure {status}"
    assert error.param == "batch_id"
    assert error.request_id == f"req_{status}"
    assert error.title == TITLES[kind]
    assert error.__cause__ is None
    assert error.__context__ is None


def test_error_str_reads_like_a_support_ticket(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=401,
        body=error_body("Incorrect API key provided", code="invalid_api_key"),
        headers={"x-request-id": "req_abc"},
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert str(info.value) == (
        "account 'default': HTTP 401 invalid_request_error (invalid_api_key): "
        "Incorrect API key provided (request id req_abc)"
    )
    assert info.value.as_dict() == {
        "account": "default",
        "kind": "auth",
        "status": 401,
        "error_type": "invalid_request_error",
        "code": "invalid_api_key",
        "message": "Incorrect API key provided",
        "param": None,
        "request_id": "req_abc",
        "retry_after": None,
    }


def test_transport_error_str_has_no_http_part(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", body=requests.exceptions.ReadTimeout("boom"))

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert str(info.value).startswith("account 'default': api.example.test did not answer in time")
    assert "HTTP" not in str(info.value)
    assert info.value.status is None


@pytest.mark.parametrize(("kind", "title"), sorted(TITLES.items()))
def test_every_kind_has_a_banner_title(kind: Any, title: str) -> None:
    assert UpstreamError(account="a", kind=kind, message="m").title == title


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        UpstreamError(account="a", kind="oops", message="m")  # type: ignore[arg-type]


def test_upstream_error_survives_pickling() -> None:
    error = UpstreamError(account="a", kind="rate_limited", message="slow down", status=429, retry_after=2.0)

    clone = pickle.loads(pickle.dumps(error))

    assert clone.as_dict() == error.as_dict()
    assert str(clone) == str(error)


def test_non_json_error_body_is_never_shown(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=502,
        body="<html><script>alert(1)</script>Bad Gateway</html>",
        content_type="text/html",
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.kind == "server"
    assert info.value.message == "HTTP 502 with a non-JSON body"
    assert str(info.value) == "account 'default': HTTP 502 with a non-JSON body"
    assert "script" not in repr(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "HTTP 400 with an empty body"),
        ('{"detail": "nope"}', "HTTP 400 without an error object"),
        ('{"error": "plain text error"}', "plain text error"),
        ('{"error": {"type": "x"}}', "HTTP 400 without an error message"),
        ('{"error": {"message": "two\\nlines", "code": 42}}', "two lines"),
    ],
)
def test_error_bodies_are_read_leniently(
    client: UpstreamClient, rsps: responses.RequestsMock, body: str, message: str
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", status=400, body=body)

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.kind == "bad_request"
    assert info.value.message == message


def test_insufficient_quota_429_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=429,
        body=error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.kind == "rate_limited"
    assert len(rsps.calls) == 1
    assert sleeps == []


# --- retries ---------------------------------------------------------------------------------------


def test_get_retries_500_twice_then_succeeds_with_exponential_backoff(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BATCHES}/batch_abc123"
    rsps.get(url, status=500, body=error_body("oops", "server_error"))
    rsps.get(url, status=500, body=error_body("oops", "server_error"))
    rsps.get(url, json=batch())

    assert client.retrieve_batch("batch_abc123")["id"] == "batch_abc123"
    assert len(rsps.calls) == 3
    assert sleeps == [0.5, 1.0]


def test_jitter_shortens_the_backoff_by_at_most_a_quarter(
    account: Account, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    client = UpstreamClient(account, sleep=sleeps.append, random=lambda: 0.0)
    rsps.get(f"{BATCHES}/batch_abc123", status=500)

    with pytest.raises(UpstreamError):
        client.retrieve_batch("batch_abc123")

    assert sleeps == [0.375, 0.75]


def test_backoff_is_capped(account: Account, rsps: responses.RequestsMock, sleeps: list[float]) -> None:
    client = UpstreamClient(account, sleep=sleeps.append, random=lambda: 1.0, max_retries=4, backoff_cap=1.5)
    rsps.get(f"{BATCHES}/batch_abc123", status=503)

    with pytest.raises(UpstreamError):
        client.retrieve_batch("batch_abc123")

    assert sleeps == [0.5, 1.0, 1.5, 1.5]
    assert len(rsps.calls) == 5


def test_three_failures_raise_after_exactly_three_calls(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", status=502, headers={"x-request-id": "req_last"})

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 3
    assert len(sleeps) == 2
    assert info.value.status == 502
    assert info.value.request_id == "req_last"


def test_max_retries_zero_makes_one_attempt(
    account: Account, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", status=500)

    with pytest.raises(UpstreamError):
        UpstreamClient(account, max_retries=0, sleep=sleeps.append).retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert sleeps == []


def test_4xx_on_get_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", status=404, body=error_body("No batch found"))

    with pytest.raises(UpstreamError):
        client.retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert sleeps == []


def test_408_on_get_is_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BATCHES}/batch_abc123"
    rsps.get(url, status=408)
    rsps.get(url, json=batch())

    client.retrieve_batch("batch_abc123")

    assert sleeps == [0.5]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "250", "Retry-After": "7"}, 0.25),
        ({"Retry-After": "0"}, 0.5),  # zero: our own backoff
        ({"Retry-After": "soon"}, 0.5),  # unreadable: our own backoff
    ],
)
def test_429_waits_as_the_upstream_asks(
    client: UpstreamClient,
    rsps: responses.RequestsMock,
    sleeps: list[float],
    headers: dict[str, str],
    expected: float,
) -> None:
    url = f"{BATCHES}/batch_abc123"
    rsps.get(url, status=429, body=error_body("slow down", "requests"), headers=headers)
    rsps.get(url, json=batch())

    client.retrieve_batch("batch_abc123")

    assert sleeps == [expected]


def test_retry_after_as_an_http_date(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BATCHES}/batch_abc123"
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    rsps.get(url, status=429, headers={"Retry-After": when})
    rsps.get(url, json=batch())

    client.retrieve_batch("batch_abc123")

    assert len(sleeps) == 1
    assert 28 <= sleeps[0] <= 31


def test_retry_after_beyond_the_cap_raises_at_once(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=429,
        body=error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
        headers={"Retry-After": "120"},
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert sleeps == []
    assert len(rsps.calls) == 1
    assert info.value.retry_after == 120
    assert info.value.kind == "rate_limited"
    assert "asked to wait 120 s" in info.value.message


def test_the_longest_call_covers_every_wait_the_client_sleeps(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    # The sync lease and the cancel claim last longest_call_seconds: the longest Retry-After the
    # client still sleeps, every time, must fit in it beside every attempt timing out.
    url = f"{BATCHES}/batch_abc123"
    for _ in range(3):
        rsps.get(url, status=429, headers={"Retry-After": "60"})

    with pytest.raises(UpstreamError):
        client.retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 3 and sleeps == [60.0, 60.0]
    assert sum(sleeps) + 3 * (5.0 + 30.0) <= longest_call_seconds(5.0, 30.0, max_retries=2)


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (requests.exceptions.ReadTimeout("read timed out"), "timeout"),
        (requests.exceptions.ConnectTimeout("connect timed out"), "timeout"),
        (requests.exceptions.ConnectionError("connection refused"), "connection"),
    ],
)
def test_get_transport_failures_are_retried_then_raised(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float], failure: Exception, kind: str
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", body=failure)

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 3
    assert sleeps == [0.5, 1.0]
    assert info.value.kind == kind
    assert info.value.status is None
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_get_recovers_after_a_timeout(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    url = f"{BATCHES}/batch_abc123"
    rsps.get(url, body=requests.exceptions.ReadTimeout("read timed out"))
    rsps.get(url, json=batch())

    assert client.retrieve_batch("batch_abc123")["id"] == "batch_abc123"
    assert sleeps == [0.5]


def test_an_unsendable_request_is_not_retried(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float]
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", body=requests.exceptions.InvalidHeader(f"bad header {KEY}"))

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert len(rsps.calls) == 1
    assert info.value.kind == "connection"
    assert_key_absent(info.value)


# --- malformed answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        json.dumps({"object": "list", "has_more": False}),
        json.dumps({"object": "list", "data": {"id": "batch_a"}, "has_more": False}),
        json.dumps({"object": "list", "data": [batch("batch_a")]}),
        json.dumps({"object": "list", "data": [batch("../etc")], "has_more": False}),
        json.dumps({"object": "list", "data": ["batch_a"], "has_more": False}),
        json.dumps({"object": "list", "data": [{"id": "batch_a"}], "has_more": False}),
        json.dumps([1, 2]),
        "[" * 100_000,
    ],
    ids=[
        "not-json",
        "no-data",
        "data-not-list",
        "no-has-more",
        "bad-item-id",
        "item-not-object",
        "item-without-status",
        "not-an-object",
        "deeply-nested",
    ],
)
def test_malformed_list_is_reported_as_malformed(
    client: UpstreamClient, rsps: responses.RequestsMock, sleeps: list[float], body: str
) -> None:
    rsps.get(BATCHES, body=body, headers={"x-request-id": "req_bad"})

    with pytest.raises(UpstreamError) as info:
        client.list_batches()

    assert info.value.kind == "malformed"
    assert info.value.status == 200
    assert info.value.request_id == "req_bad"
    assert info.value.title == "Malformed upstream response"
    assert len(rsps.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "payload",
    [
        batch("../etc"),
        batch("batch_abc123\n"),
        {"id": "batch_abc123"},
        {"id": "batch_abc123", "status": None},
        None,
        "batch_abc123",
    ],
)
def test_malformed_batch_is_reported_as_malformed(
    client: UpstreamClient, rsps: responses.RequestsMock, payload: Any
) -> None:
    rsps.get(f"{BATCHES}/batch_abc123", json=payload)

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.kind == "malformed"


def test_malformed_json_on_cancel_is_malformed(client: UpstreamClient, rsps: responses.RequestsMock) -> None:
    rsps.post(f"{BATCHES}/batch_abc123/cancel", body="{not json")

    with pytest.raises(UpstreamError) as info:
        client.cancel_batch("batch_abc123")

    assert info.value.kind == "malformed"
    assert len(rsps.calls) == 1


# --- ids -------------------------------------------------------------------------------------------

BAD_BATCH_IDS = [
    "batch_x/../../files",
    "batch_x%2F..",
    "batch_",
    "b\u0430tch_abc",  # Cyrillic a
    "batch_\u0430bc",
    "batch_abc\n",
    "batch_abc ",
    "batch_" + "a" * 494,
    "batch_" + "a" * 101,
    "file-abc",
    "",
    "batch_abc?x=1",
    "batch_abc#x",
]
BAD_FILE_IDS = [
    "file-../x",
    "file-",
    "file-abc\n",
    "file-\u0430bc",
    "file-" + "a" * 101,
    "batch_abc",
    "file-a/b",
]


@pytest.mark.parametrize("bad", BAD_BATCH_IDS)
def test_invalid_batch_ids_are_refused_before_any_request(
    client: UpstreamClient, rsps: responses.RequestsMock, bad: str
) -> None:
    with pytest.raises(InvalidIdError, match="batch id"):
        client.retrieve_batch(bad)
    with pytest.raises(InvalidIdError, match="batch id"):
        client.cancel_batch(bad)
    with pytest.raises(InvalidIdError, match="batch id"):
        client.list_batches(after=bad)
    with pytest.raises(InvalidIdError, match="batch id"):
        client.iter_batches(after=bad)

    assert len(rsps.calls) == 0


@pytest.mark.parametrize("bad", BAD_FILE_IDS)
def test_invalid_file_ids_are_refused_before_any_request(
    client: UpstreamClient, rsps: responses.RequestsMock, bad: str
) -> None:
    with pytest.raises(InvalidIdError, match="file id"):
        client.retrieve_file(bad)
    with pytest.raises(InvalidIdError, match="file id"):
        client.open_file_content(bad)

    assert len(rsps.calls) == 0


def test_invalid_id_error_is_a_value_error_and_echoes_at_most_40_chars() -> None:
    with pytest.raises(ValueError) as info:
        validate_batch_id("batch_" + "x" * 494)

    assert isinstance(info.value, InvalidIdError)
    assert "batch_" + "x" * 34 + "..." in str(info.value)
    assert "x" * 35 not in str(info.value)


def test_non_string_ids_are_refused() -> None:
    with pytest.raises(InvalidIdError):
        validate_batch_id(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", ["batch_abc123", "batch_6f3e1b2c-aa_bb", "batch_" + "a" * 100])
def test_valid_batch_ids_pass(good: str) -> None:
    assert validate_batch_id(good) == good
    assert BATCH_ID_RE.fullmatch(good)


@pytest.mark.parametrize("good", ["file-abc123", "file-HOWS94", "file-" + "Z" * 100, "file-a_b-c"])
def test_valid_file_ids_pass(good: str) -> None:
    assert validate_file_id(good) == good
    assert FILE_ID_RE.fullmatch(good)


# --- the key never leaks ---------------------------------------------------------------------------


def assert_key_absent(error: UpstreamError, records: list[logging.LogRecord] | None = None) -> None:
    rendered = [
        str(error),
        repr(error),
        repr(error.args),
        repr(error.as_dict()),
        repr(vars(error)),
        "".join(traceback.format_exception(error)),
    ]
    for text in rendered:
        assert KEY not in text
        assert "SUPERSECRET" not in text
    assert error.__cause__ is None
    assert error.__context__ is None
    for record in records or []:
        assert KEY not in record.getMessage()
        assert "SUPERSECRET" not in record.getMessage()


LEAKY_FAILURES: list[tuple[str, dict[str, Any]]] = [
    (
        "401-echoing-the-key",
        {
            "status": 401,
            "body": error_body(f"Incorrect API key provided: {KEY}.", code=KEY, param=f"key={KEY}"),
            "headers": {"x-request-id": f"req_{KEY}"},
        },
    ),
    (
        "401-echoing-a-masked-key",
        {"status": 401, "body": error_body("Incorrect API key provided: sk-test-***********6789.")},
    ),
    ("read-timeout", {"body": requests.exceptions.ReadTimeout(f"GET with Authorization: Bearer {KEY}")}),
    ("connect-timeout", {"body": requests.exceptions.ConnectTimeout(f"Bearer {KEY}")}),
    ("connection-error", {"body": requests.exceptions.ConnectionError(f"refused; headers Bearer {KEY}")}),
    ("malformed", {"status": 200, "body": f"{{not json {KEY}"}),
    ("html-502", {"status": 502, "body": f"<html>{KEY}</html>"}),
    ("ssl-error", {"body": requests.exceptions.SSLError(f"handshake {KEY}")}),
]


@pytest.mark.parametrize("spec", [spec for _, spec in LEAKY_FAILURES], ids=[n for n, _ in LEAKY_FAILURES])
def test_the_key_never_appears_in_errors_or_logs(
    client: UpstreamClient,
    rsps: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    spec: dict[str, Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.get(f"{BATCHES}/batch_abc123", **spec)

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert_key_absent(info.value, caplog.records)
    assert caplog.records


def test_an_echoed_key_is_redacted_but_the_message_kept(
    client: UpstreamClient, rsps: responses.RequestsMock
) -> None:
    rsps.get(
        f"{BATCHES}/batch_abc123",
        status=401,
        body=error_body(f"Incorrect API key provided: {KEY}. Also sk-proj-abcdefghij123 is not it."),
    )

    with pytest.raises(UpstreamError) as info:
        client.retrieve_batch("batch_abc123")

    assert info.value.message == "Incorrect API key provided: [redacted]. Also sk-[redacted] is not it."


def test_an_azure_key_echoed_back_is_redacted(rsps: responses.RequestsMock) -> None:
    azure_key = "0123456789abcdef0123456789abcdef"
    azure = Account(
        name="az", api_key=azure_key, base_url="https://res.openai.azure.com/openai/v1", kind="azure"
    )
    rsps.get(
        "https://res.openai.azure.com/openai/v1/batches/batch_abc123",
        status=401,
        body=error_body(f"Access denied for key {azure_key}"),
    )

    with pytest.raises(UpstreamError) as info:
        UpstreamClient(azure).retrieve_batch("batch_abc123")

    assert azure_key not in str(info.value)
    assert info.value.message == "Access denied for key [redacted]"


def test_an_error_built_by_hand_is_scrubbed_of_key_shaped_text() -> None:
    error = UpstreamError(account="a", kind="auth", message=f"bad {KEY}", code=KEY)

    assert_key_absent(error)
    assert redact(f"x {KEY} y") == "x sk-[redacted] y"
    assert redact(f"x {KEY} y", KEY) == "x [redacted] y"


# --- logging ---------------------------------------------------------------------------------------


def test_one_info_line_per_attempt(
    client: UpstreamClient, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batches.upstream")
    url = f"{BATCHES}/batch_abc123"
    rsps.get(url, status=500, headers={"x-request-id": "req_one"})
    rsps.get(url, body=requests.exceptions.ConnectTimeout("slow"))
    rsps.get(url, json=batch(), headers={"x-request-id": "req_three"})

    client.retrieve_batch("batch_abc123")

    lines = [
        r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "batches.upstream"
    ]
    assert len(lines) == 3
    expected = [("500", "req_one", "1"), ("timeout", "-", "2"), ("200", "req_three", "3")]
    for line, (status, request_id, attempt) in zip(lines, expected, strict=True):
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        assert line.startswith("upstream ")
        assert fields["account"] == "default"
        assert fields["method"] == "GET"
        assert fields["path"] == "/batches/batch_abc123"
        assert fields["status"] == status
        assert fields["request_id"] == request_id
        assert fields["attempt"] == attempt
        assert int(fields["duration_ms"]) >= 0


def test_log_lines_carry_no_headers(
    client: UpstreamClient, rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.post(f"{BATCHES}/batch_abc123/cancel", json=batch(status="cancelling"))

    client.cancel_batch("batch_abc123")

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "method=POST path=/batches/batch_abc123/cancel status=200" in text
    assert KEY not in text
    assert "Bearer" not in text
    assert "Authorization" not in text
