"""The one module that talks to the upstream Batch API (OpenAI or Azure OpenAI).

Everything that can go wrong becomes an `UpstreamError`, whose text and attributes never hold the
account's API key: every string the upstream sends back is scrubbed, transport exceptions are
described by us instead of being chained (their text and attributes can carry the URL and the
request's headers), and nothing logs headers.

Ids are validated before any URL is built, so no caller can steer a request to another upstream path.

Pure Python on `requests`: no Django here, so it can be used and tested without settings.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ReadTimeoutError

if TYPE_CHECKING:
    from types import TracebackType

    # Only for typing: batches.accounts imports Django, this module must not.
    from batches.accounts import Account

logger = logging.getLogger("batches.upstream")

USER_AGENT = "batch-dashboard/0.1"

# The character classes are spelled out (not \w) so that no Unicode lookalike can pass; fullmatch
# (not `$`) so that a trailing newline cannot either.
BATCH_ID_RE = re.compile(r"batch_[A-Za-z0-9_-]{1,100}", re.ASCII)
FILE_ID_RE = re.compile(r"file-[A-Za-z0-9_-]{1,100}", re.ASCII)

MAX_PAGE_LIMIT = 100
BACKOFF_CAP_SECONDS = 8.0
# A longer Retry-After is reported to the caller instead of slept.
MAX_RETRY_AFTER_SECONDS = 60.0
# A page of 100 batches is well under 1 MiB; anything far larger is a misbehaving upstream, and
# holding it in memory would let it exhaust ours.
MAX_JSON_BYTES = 16 * 1024 * 1024
# An error body is only read for its message; a proxy's HTML page needs no more than this.
MAX_ERROR_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 1000
MAX_FIELD_CHARS = 200
ID_ECHO_CHARS = 40

ErrorKind = Literal[
    "auth",
    "permission",
    "not_found",
    "conflict",
    "bad_request",
    "unprocessable",
    "rate_limited",
    "server",
    "timeout",
    "connection",
    "malformed",
]

TITLES: dict[str, str] = {
    "auth": "Authentication failed",
    "permission": "Permission denied",
    "not_found": "Not found",
    "conflict": "Conflict",
    "bad_request": "Bad request",
    "unprocessable": "Unprocessable",
    "rate_limited": "Rate limited",
    "server": "Upstream server error",
    "timeout": "Upstream timed out",
    "connection": "Upstream unreachable",
    "malformed": "Malformed upstream response",
}

_STATUS_KINDS: dict[int, ErrorKind] = {
    400: "bad_request",
    401: "auth",
    403: "permission",
    404: "not_found",
    409: "conflict",
    422: "unprocessable",
    429: "rate_limited",
}

_KEY_LIKE_RE = re.compile(r"sk-[A-Za-z0-9_*-]{6,}")
# Upstream text ends up in banners, the audit log and log lines: keep it on one line.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


# --- ids -------------------------------------------------------------------------------------------


class InvalidIdError(ValueError):
    """An id that is not of the form the upstream issues; raised before any request is made."""


def _check_id(value: object, pattern: re.Pattern[str], what: str, form: str) -> str:
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string, not {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        shown = value if len(value) <= ID_ECHO_CHARS else value[:ID_ECHO_CHARS] + "..."
        raise InvalidIdError(f"not a valid {what}: {shown!r} (expected {form})")
    return value


def validate_batch_id(value: str) -> str:
    return _check_id(value, BATCH_ID_RE, "batch id", "'batch_' and 1 to 100 of A-Z a-z 0-9 _ -")


def validate_file_id(value: str) -> str:
    return _check_id(value, FILE_ID_RE, "file id", "'file-' and 1 to 100 of A-Z a-z 0-9 _ -")


# --- scrubbing -------------------------------------------------------------------------------------


def redact(text: str, secret: str = "") -> str:
    """Remove the exact secret, then anything shaped like an OpenAI key (the upstream echoes partial
    keys such as `sk-abc***xyz` in its 401 messages)."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE_RE.sub("sk-[redacted]", text)


def _clean(value: object, secret: str, limit: int) -> str | None:
    """Upstream-provided text made safe to show: redacted first (truncating first could cut a key
    in half and leave a piece the patterns no longer recognise), then put on one line and capped."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = _CONTROL_RE.sub(" ", redact(str(value), secret)).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or None


# --- the error -------------------------------------------------------------------------------------


class UpstreamError(Exception):
    """Every failure to get an answer from the upstream, of whatever cause."""

    def __init__(
        self,
        *,
        account: str,
        kind: ErrorKind,
        message: str,
        status: int | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if kind not in TITLES:
            raise ValueError(f"unknown upstream error kind {kind!r}")
        self.account = account
        self.kind: ErrorKind = kind
        self.status = status
        # The client scrubs with the exact key already; this catches any key-shaped text a caller
        # building one by hand might pass.
        self.error_type = _redact_optional(error_type)
        self.code = _redact_optional(code)
        self.message = redact(message)
        self.param = _redact_optional(param)
        self.request_id = _redact_optional(request_id)
        self.retry_after = retry_after
        super().__init__(self._render())

    @property
    def title(self) -> str:
        return TITLES[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "kind": self.kind,
            "status": self.status,
            "error_type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
        }

    def __str__(self) -> str:
        return self._render()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"UpstreamError({fields})"

    def __reduce__(self) -> tuple[Callable[[dict[str, Any]], UpstreamError], tuple[dict[str, Any]]]:
        # The keyword-only constructor defeats Exception's default pickling (cls(*args)).
        return (_rebuild_upstream_error, (self.as_dict(),))

    def _render(self) -> str:
        head = ""
        if self.status is not None:
            head = f"HTTP {self.status}"
            if self.error_type:
                head += f" {self.error_type}"
            if self.code:
                head += f" ({self.code})"
        # A message such as "HTTP 502 with a non-JSON body" already says what the head would.
        body = f"{head}: {self.message}" if head and not self.message.startswith(head) else self.message
        text = f"account {self.account!r}: {body}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text


def _redact_optional(value: str | None) -> str | None:
    return None if value is None else redact(value)


def _rebuild_upstream_error(fields: dict[str, Any]) -> UpstreamError:
    return UpstreamError(**fields)


def _with_note(error: UpstreamError, note: str) -> UpstreamError:
    fields = error.as_dict()
    fields["message"] = f"{error.message}; {note}"
    return UpstreamError(**fields)


# --- results ---------------------------------------------------------------------------------------


@dataclass
class BatchPage:
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str | None
    last_id: str | None


class FileContent:
    """A file body being streamed from the upstream; close it (or use `with`) to free the connection.

    Iterating it directly yields chunks too, so it can be handed to a streaming HTTP response, which
    closes it when done.
    """

    def __init__(
        self,
        response: requests.Response,
        *,
        request_id: str | None,
        on_failure: Callable[[Exception], UpstreamError],
    ) -> None:
        self._response = response
        self._on_failure = on_failure
        self.request_id = request_id
        self.content_type: str = response.headers.get("Content-Type") or "application/octet-stream"
        self.content_length: int | None = _content_length(response.headers)

    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        chunks = self._response.iter_content(chunk_size)
        try:
            while True:
                failure: UpstreamError | None = None
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                # The transport's exception can carry the URL and headers: described, not chained.
                except Exception as exc:
                    failure = self._on_failure(exc)
                if failure is not None:
                    raise failure
                if chunk:
                    yield chunk
        finally:
            self.close()

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> FileContent:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FileContent(content_type={self.content_type!r}, content_length={self.content_length!r})"


def _content_length(headers: Any) -> int | None:
    # requests decodes gzip/deflate while streaming, so an encoded body's length is not what we yield.
    if headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return None
    raw = headers.get("Content-Length")
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


# --- helpers ---------------------------------------------------------------------------------------


def api_base_url(base_url: str) -> str:
    """The account's base URL with exactly one `/v1` at the end, whichever way it was configured."""
    base = base_url.strip().rstrip("/")
    if not urlsplit(base).path.endswith("/v1"):
        base += "/v1"
    return base


def _host_label(base_url: str) -> str:
    # Only host and port: a base URL may carry user:password, which has no place in a message.
    parts = urlsplit(base_url)
    host = parts.hostname or "the upstream"
    return f"{host}:{parts.port}" if parts.port else host


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_LIMIT}, not {limit!r}")
    return limit


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:g}"


def _positive_finite(value: float) -> float | None:
    return value if math.isfinite(value) and value > 0 else None


def longest_call_seconds(connect_timeout: float, read_timeout: float, max_retries: int) -> float:
    """The longest one call of an UpstreamClient (built with these settings and the default waits)
    can take: every attempt at full timeouts, and the longest wait it sleeps between two."""
    wait = max(MAX_RETRY_AFTER_SECONDS, BACKOFF_CAP_SECONDS)
    return (max_retries + 1) * (connect_timeout + read_timeout) + max_retries * wait


def parse_retry_after(headers: Any, now: float) -> float | None:
    """Seconds the upstream asked us to wait, from `retry-after-ms` or `Retry-After` (seconds or an
    HTTP date); None when absent, unreadable, zero or in the past (then our own backoff applies)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            waited = _positive_finite(float(raw_ms) / 1000)
        except ValueError:
            waited = None
        if waited is not None:
            return waited
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _positive_finite(float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return _positive_finite(when.timestamp() - now)


def _read_capped(response: requests.Response, limit: int) -> bytes | None:
    """The whole body, or None if it is larger than limit."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _read_prefix(response: requests.Response, limit: int) -> bytes:
    """Up to limit bytes of an error body; a body we cannot read is treated as empty."""
    chunks: list[bytes] = []
    size = 0
    # A read that fails keeps what arrived: the status alone still makes a useful error.
    with contextlib.suppress(Exception):
        for chunk in response.iter_content(8192):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    return b"".join(chunks)[:limit]


def _loads(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    # RecursionError: a deeply nested body is hostile, not JSON we can use.
    except (ValueError, RecursionError):
        return False, None


class _ErrorFields(NamedTuple):
    message: str
    error_type: object
    code: object
    param: object


def _error_fields(body: bytes, status: int) -> _ErrorFields:
    """Read `{"error": {"message", "type", "param", "code"}}` leniently; the text of a body that is
    not JSON (a proxy's HTML page, say) is never shown."""
    if not body.strip():
        return _ErrorFields(f"HTTP {status} with an empty body", None, None, None)
    ok, payload = _loads(body)
    if not ok:
        return _ErrorFields(f"HTTP {status} with a non-JSON body", None, None, None)
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, str) and error.strip():
        return _ErrorFields(error, None, None, None)
    if not isinstance(error, dict):
        return _ErrorFields(f"HTTP {status} without an error object", None, None, None)
    message = error.get("message")
    if not isinstance(message, str) or not message.strip():
        message = f"HTTP {status} without an error message"
    return _ErrorFields(message, error.get("type"), error.get("code"), error.get("param"))


class _TransportFailure(NamedTuple):
    kind: ErrorKind
    message: str
    retry_get: bool
    # Whether a POST may be sent again: only when it cannot have reached the upstream, or when the
    # failure says nothing about that (a plain connection error; cancel is idempotent upstream).
    retry_post: bool


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(arg, kind) for arg in getattr(exc, "args", ()))


@dataclass
class _Success:
    response: requests.Response
    body: bytes


@dataclass
class _Failure:
    error: UpstreamError
    retryable: bool


# --- the client ------------------------------------------------------------------------------------


class UpstreamClient:
    """One account's view of the upstream: batches (list, retrieve, cancel) and their files."""

    def __init__(
        self,
        account: Account,
        *,
        session: requests.Session | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        backoff_cap: float = BACKOFF_CAP_SECONDS,
        max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.account = account
        self.base_url = api_base_url(account.base_url)
        self._host = _host_label(self.base_url)
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._timeout = (connect_timeout, read_timeout)
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._random = random
        # Sent per request rather than set on the session: a session may be shared between accounts.
        self._headers = {
            **account.auth_headers(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def __repr__(self) -> str:
        # The host only: a base URL may carry user:password.
        return f"UpstreamClient(account={self.account.name!r}, host={self._host!r})"

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> UpstreamClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- public calls ---

    def list_batches(self, *, after: str | None = None, limit: int = 100) -> BatchPage:
        params = {"limit": str(_check_limit(limit))}
        if after is not None:
            params["after"] = validate_batch_id(after)
        success = self._call("GET", "/batches", params=params)
        return self._page(self._json(success), success.response)

    def iter_batches(self, *, limit: int = 100, after: str | None = None) -> Iterator[dict[str, Any]]:
        # Checked now, not at the first next(), so a bad argument fails where it was passed.
        _check_limit(limit)
        if after is not None:
            validate_batch_id(after)
        return self._iter_batches(limit, after)

    def retrieve_batch(self, batch_id: str) -> dict[str, Any]:
        batch_id = validate_batch_id(batch_id)
        success = self._call("GET", f"/batches/{batch_id}")
        return self._batch(self._json(success), success.response, expected_id=batch_id)

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        batch_id = validate_batch_id(batch_id)
        success = self._call("POST", f"/batches/{batch_id}/cancel")
        return self._batch(self._json(success), success.response, expected_id=batch_id)

    def retrieve_file(self, file_id: str) -> dict[str, Any]:
        file_id = validate_file_id(file_id)
        success = self._call("GET", f"/files/{file_id}")
        payload = self._json(success)
        if not isinstance(payload, dict) or payload.get("id") != file_id:
            raise self._malformed(success.response, "the file object does not carry the requested id")
        return payload

    def open_file_content(self, file_id: str) -> FileContent:
        file_id = validate_file_id(file_id)
        success = self._call("GET", f"/files/{file_id}/content", stream=True)
        return FileContent(
            success.response,
            request_id=self._request_id(success.response),
            on_failure=self._stream_failure,
        )

    # --- pagination and validation ---

    def _iter_batches(self, limit: int, after: str | None) -> Iterator[dict[str, Any]]:
        cursors: set[str] = set()
        while True:
            page = self.list_batches(after=after, limit=limit)
            yield from page.data
            # An empty page that claims more would otherwise be asked for again, forever.
            if not page.has_more or not page.data:
                return
            # The last item's id, as the SDK does: `last_id` is absent from some upstreams.
            after = page.data[-1]["id"]
            if after in cursors:
                raise UpstreamError(
                    account=self.account.name,
                    kind="malformed",
                    message="the batch list returned a page already seen; stopped paginating",
                )
            cursors.add(after)

    def _json(self, success: _Success) -> Any:
        ok, payload = _loads(success.body)
        if not ok:
            raise self._malformed(success.response, "the response body is not valid JSON")
        return payload

    def _page(self, payload: Any, response: requests.Response) -> BatchPage:
        if not isinstance(payload, dict):
            raise self._malformed(response, "the batch list is not a JSON object")
        data = payload.get("data")
        if not isinstance(data, list):
            raise self._malformed(response, "the batch list has no 'data' array")
        has_more = payload.get("has_more")
        if not isinstance(has_more, bool):
            raise self._malformed(response, "the batch list has no boolean 'has_more'")
        for index, item in enumerate(data):
            self._check_batch(item, response, f"item {index} of the batch list")
        return BatchPage(
            data=data,
            has_more=has_more,
            first_id=_batch_id_or_none(payload.get("first_id")),
            last_id=_batch_id_or_none(payload.get("last_id")),
        )

    def _batch(self, payload: Any, response: requests.Response, *, expected_id: str) -> dict[str, Any]:
        batch = self._check_batch(payload, response, "the batch")
        # Another batch under this one's URL (a caching proxy, a routing bug) must not be shown as it.
        if batch["id"] != expected_id:
            raise self._malformed(response, "the upstream answered with a different batch than requested")
        return batch

    def _check_batch(self, item: Any, response: requests.Response, where: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise self._malformed(response, f"{where} is not a JSON object")
        batch_id = item.get("id")
        if not isinstance(batch_id, str) or BATCH_ID_RE.fullmatch(batch_id) is None:
            raise self._malformed(response, f"{where} has no valid batch id")
        if not isinstance(item.get("status"), str):
            raise self._malformed(response, f"{where} has no status")
        return item

    def _malformed(self, response: requests.Response, message: str) -> UpstreamError:
        return UpstreamError(
            account=self.account.name,
            kind="malformed",
            message=message,
            status=response.status_code,
            request_id=self._request_id(response),
        )

    # --- the HTTP loop ---

    def _call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, stream: bool = False
    ) -> _Success:
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(method, path, params, stream, attempt)
            if isinstance(outcome, _Success):
                return outcome
            error = outcome.error
            if not outcome.retryable or attempt == attempts:
                raise error
            if error.retry_after is not None and error.retry_after > self._max_retry_after:
                # Holding a web request for minutes helps nobody: say how long, let the caller decide.
                wait = _format_seconds(error.retry_after)
                raise _with_note(error, f"the upstream asked to wait {wait} s before retrying")
            delay = error.retry_after if error.retry_after is not None else self._backoff(attempt - 1)
            logger.debug(
                "upstream retry account=%s method=%s path=%s after=%s delay_s=%.3f",
                self.account.name,
                method,
                path,
                error.status if error.status is not None else error.kind,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, retry_index: int) -> float:
        delay = min(self._backoff_base * 2**retry_index, self._backoff_cap)
        # Jitter so that many workers failing together do not come back together.
        return delay * (0.75 + 0.25 * self._random())

    def _attempt(
        self, method: str, path: str, params: dict[str, str] | None, stream: bool, attempt: int
    ) -> _Success | _Failure:
        started = time.monotonic()
        response: requests.Response | None = None
        failure: _TransportFailure | None = None
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
                # Always streamed, so no body is read whole before we decide how much of it we want.
                stream=True,
                # A redirect to another host would carry the `api-key` header with it.
                allow_redirects=False,
            )
        # Whatever the transport raises (requests, urllib3, a UnicodeError over a bad header value)
        # may carry the URL or the headers in its text or attributes: described, never kept.
        except Exception as exc:
            failure = self._describe_transport(exc, sent=False)
        if response is None:
            assert failure is not None
            self._log(method, path, failure.kind, started, None, attempt)
            return self._transport_outcome(method, failure)

        self._log(method, path, response.status_code, started, self._request_id(response), attempt)
        if not 200 <= response.status_code < 300:
            return self._status_outcome(method, response)
        if stream:
            return _Success(response, b"")
        return self._read_outcome(method, response)

    def _read_outcome(self, method: str, response: requests.Response) -> _Success | _Failure:
        body: bytes | None = None
        failure: _TransportFailure | None = None
        try:
            body = _read_capped(response, MAX_JSON_BYTES)
        except Exception as exc:  # see _attempt
            failure = self._describe_transport(exc, sent=True)
        finally:
            response.close()
        if failure is not None:
            return self._transport_outcome(method, failure)
        if body is None:
            limit = MAX_JSON_BYTES // (1024 * 1024)
            return _Failure(self._malformed(response, f"the response body is larger than {limit} MiB"), False)
        return _Success(response, body)

    def _status_outcome(self, method: str, response: requests.Response) -> _Failure:
        status = response.status_code
        try:
            body = _read_prefix(response, MAX_ERROR_BYTES)
        finally:
            response.close()
        if 300 <= status < 400:
            fields = _ErrorFields(
                f"HTTP {status} redirect refused; check the account's base URL", None, None, None
            )
        else:
            fields = _error_fields(body, status)
        key = self.account.api_key
        code = _clean(fields.code, key, MAX_FIELD_CHARS)
        error = UpstreamError(
            account=self.account.name,
            kind=_STATUS_KINDS.get(status, "server"),
            status=status,
            error_type=_clean(fields.error_type, key, MAX_FIELD_CHARS),
            code=code,
            message=_clean(fields.message, key, MAX_MESSAGE_CHARS) or f"HTTP {status}",
            param=_clean(fields.param, key, MAX_FIELD_CHARS),
            request_id=self._request_id(response),
            retry_after=parse_retry_after(response.headers, time.time()),
        )
        return _Failure(error, _status_retryable(method, status, code))

    def _transport_outcome(self, method: str, failure: _TransportFailure) -> _Failure:
        error = UpstreamError(account=self.account.name, kind=failure.kind, message=failure.message)
        return _Failure(error, failure.retry_get if method == "GET" else failure.retry_post)

    def _stream_failure(self, exc: Exception) -> UpstreamError:
        failure = self._describe_transport(exc, sent=True)
        return UpstreamError(account=self.account.name, kind=failure.kind, message=failure.message)

    def _describe_transport(self, exc: Exception, *, sent: bool) -> _TransportFailure:
        """A safe account of a transport exception. `sent`: the status line had already arrived, so
        a POST was certainly applied and must not be repeated."""
        host = self._host
        connect, read = self._timeout
        exceptions = requests.exceptions
        if isinstance(exc, exceptions.ConnectTimeout):
            message = f"timed out connecting to {host} (after {connect:g} s)"
            return _TransportFailure("timeout", message, True, not sent)
        if isinstance(exc, exceptions.ReadTimeout) or _caused_by(exc, ReadTimeoutError):
            message = f"{host} did not answer in time (read timeout {read:g} s)"
            return _TransportFailure("timeout", message, True, False)
        if isinstance(exc, exceptions.ChunkedEncodingError | exceptions.ContentDecodingError):
            message = f"the connection to {host} broke while reading the response"
            return _TransportFailure("connection", message, True, False)
        if isinstance(exc, exceptions.SSLError):
            return _TransportFailure("connection", f"TLS error talking to {host}", True, not sent)
        if isinstance(exc, exceptions.ProxyError):
            return _TransportFailure("connection", f"the proxy to {host} failed", True, not sent)
        if isinstance(exc, exceptions.ConnectionError):
            message = (
                f"the connection to {host} broke while reading the response"
                if sent
                else f"could not connect to {host}"
            )
            return _TransportFailure("connection", message, True, not sent)
        # Not a network condition (a bad URL or header, say): repeating it cannot help.
        message = f"could not send the request to {host} ({type(exc).__name__})"
        return _TransportFailure("connection", message, False, False)

    def _request_id(self, response: requests.Response) -> str | None:
        return _clean(response.headers.get("x-request-id"), self.account.api_key, MAX_FIELD_CHARS)

    def _log(
        self,
        method: str,
        path: str,
        status: int | str,
        started: float,
        request_id: str | None,
        attempt: int,
    ) -> None:
        logger.info(
            "upstream account=%s method=%s path=%s status=%s duration_ms=%d request_id=%s attempt=%d",
            self.account.name,
            method,
            path,
            status,
            int((time.monotonic() - started) * 1000),
            request_id or "-",
            attempt,
        )


def _status_retryable(method: str, status: int, code: str | None) -> bool:
    if method != "GET":
        # A 4xx on cancel (409 above all) is a refusal that repeating here cannot change. A 429 is
        # the caller's to wait out: a cancel is an audited action, and so is asking again (bulk
        # cancel does, with an audit entry per try). A 5xx is repeated, cancel being idempotent.
        return status >= 500
    if status == 429 and code == "insufficient_quota":
        # Out of credit, not a burst limit: waiting a second will not change the answer.
        return False
    return status in (408, 429) or status >= 500


def _batch_id_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and BATCH_ID_RE.fullmatch(value) else None
