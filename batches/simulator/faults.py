"""Error envelopes in OpenAI's shape, and injectable faults."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = frozenset({"latency", "status", "timeout", "malformed", "reset", "empty_page"})
# Kinds that decide the response; "latency" only delays the normal (or faulty) answer.
ANSWERING_KINDS = FAULT_KINDS - {"latency"}
# A "timeout" fault with seconds=0 holds the request this long: longer than any sane client timeout.
DEFAULT_TIMEOUT_HOLD = 30.0
MALFORMED_BODY = b'{"object": "list", "data": [{"id": "batch_'


class ApiError(Exception):
    """An error the API answers with `{"error": {...}}`; raised by Simulator methods too."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def batch_not_found(batch_id: str) -> ApiError:
    return ApiError(404, f"No batch found with id '{batch_id}'.")


def file_not_found(file_id: str) -> ApiError:
    # The Files API words its 404 differently from the Batch API and names the parameter.
    return ApiError(404, f"No such File object: {file_id}", param="id")


def invalid_url(method: str, path: str) -> ApiError:
    return ApiError(404, f"Invalid URL ({method} {path})")


def cannot_cancel(status: str) -> ApiError:
    return ApiError(409, f"Cannot cancel a batch with status '{status}'.")


def status_error(status: int, retry_after: float = 1.0) -> ApiError:
    """The envelope OpenAI sends for a given status code, for injected "status" faults."""
    if status == 401:
        return ApiError(
            401,
            "Incorrect API key provided: sk-pr***ed. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
    if status == 403:
        return ApiError(
            403,
            "You have insufficient permissions for this operation. Missing scopes: api.batch.read. "
            "Check that you have the correct role in your organization (Reader, Writer, Owner) and "
            "project (Member, Owner), and if you're using a restricted API key, that it has the "
            "necessary scopes.",
        )
    if status == 404:
        return ApiError(404, "The requested resource was not found.")
    if status == 429:
        wait_ms = max(0, round(retry_after * 1000))
        return ApiError(
            429,
            "Rate limit reached for requests in organization org-sim on requests per min (RPM): "
            f"Limit 60, Used 60, Requested 1. Please try again in {wait_ms}ms.",
            error_type="requests",
            code="rate_limit_exceeded",
            headers={
                # Retry-After only takes whole seconds; the SDK prefers the precise retry-after-ms.
                "retry-after": str(max(0, math.ceil(retry_after))),
                "retry-after-ms": str(wait_ms),
            },
        )
    if status == 500:
        return ApiError(
            500,
            "The server had an error while processing your request. Sorry about that!",
            error_type="server_error",
        )
    if status == 502:
        # What OpenAI's edge sends: note the integer code, which the Error schema does not allow.
        return ApiError(502, "Bad gateway.", error_type="cf_bad_gateway", code=502)
    if status == 503:
        return ApiError(503, "The server is overloaded or not ready yet.", error_type="server_error")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return ApiError(status, f"Simulated HTTP {status} error.", error_type=kind)


@dataclass
class Fault:
    """A rule that makes matching API requests misbehave.

    `path` is a regex searched in the route path after the `/v1` prefix (e.g. `^/batches$`), `method`
    an HTTP method; None matches everything. `rate` is the chance that a matching request is hit
    (rolled on the simulator's seeded RNG) and `count` caps how many requests are hit, after which
    the fault turns inert (`active` False). `hits` counts the requests hit so far.
    """

    kind: str
    path: str | None = None
    method: str | None = None
    rate: float = 1.0
    count: int | None = None
    status: int = 500
    retry_after: float = 1.0
    seconds: float = 0.0
    active: bool = True
    hits: int = 0
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.seconds < 0 or self.retry_after < 0:
            raise ValueError("seconds and retry_after must be >= 0")
        self._pattern = re.compile(self.path) if self.path else None
        if self.count == 0:
            self.active = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        allowed = {"kind", "path", "method", "rate", "count", "status", "retry_after", "seconds"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def matches(self, method: str, route: str, route_key: str) -> bool:
        if not self.active:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self._pattern is not None and not self._pattern.search(route):
            return False
        # An empty page only makes sense as an answer to the list endpoint.
        return self.kind != "empty_page" or route_key == "GET /batches"

    def consume(self) -> None:
        self.hits += 1
        if self.count is not None and self.hits >= self.count:
            self.active = False

    @property
    def hold_seconds(self) -> float:
        return self.seconds or DEFAULT_TIMEOUT_HOLD


def empty_page() -> dict[str, Any]:
    # The silent truncation users report: nothing in data, yet has_more says there is.
    return {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": True}
