"""The HTTP face of a Simulator: OpenAI's batch and file routes, plus `/_sim/*` control routes."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .faults import MALFORMED_BODY, ApiError, Fault, empty_page, invalid_url, status_error
from .world import DEFAULT_LIMIT, Simulator

# (method, pattern, stats key). Paths are matched after the `/v1` prefix.
ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("GET", re.compile(r"^/batches$"), "GET /batches"),
    ("GET", re.compile(r"^/batches/(?P<id>[^/]+)$"), "GET /batches/{id}"),
    ("POST", re.compile(r"^/batches/(?P<id>[^/]+)/cancel$"), "POST /batches/{id}/cancel"),
    ("GET", re.compile(r"^/files/(?P<id>[^/]+)$"), "GET /files/{id}"),
    ("GET", re.compile(r"^/files/(?P<id>[^/]+)/content$"), "GET /files/{id}/content"),
)
# Any prefix ending in /v1 is accepted: `/v1` for OpenAI, `/openai/v1` for Azure.
API_PATH = re.compile(r"^(?P<prefix>(?:/[^/]+)*?)/v1(?P<route>/.*)$")
CONTROL_PATH = re.compile(r"^(?:(?:/[^/]+)*?/v1)?/_sim(?P<route>/.*)$")
MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
MAX_BODY = 1 << 20


def mask_key(key: str) -> str:
    """Mask a key the way OpenAI quotes it back: a recognisable head and tail, never the whole key."""
    if len(key) < 8:
        return "***"
    return f"{key[:5]}***{key[-2:]}"


def wrong_key(key: str) -> ApiError:
    return ApiError(
        401,
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def match_route(method: str, route: str) -> tuple[str, str | None]:
    """The stats key and the id in the path; unknown routes get a per-method catch-all key."""
    for route_method, pattern, key in ROUTES:
        found = pattern.match(route)
        if found and route_method == method:
            return key, found.groupdict().get("id")
    return f"{method} (unknown route)", None


def _stats(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    return {"stats": sim.stats(), "total": sim.total_requests()}


def _reset_stats(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    sim.reset_stats()
    return {"ok": True}


def _list_faults(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    return {"faults": [fault.to_dict() for fault in sim.faults()]}


def _add_fault(sim: Simulator, data: dict[str, Any]) -> dict[str, Any]:
    return sim.add_fault(Fault.from_dict(data)).to_dict()


def _clear_faults(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    sim.clear_faults()
    return {"ok": True}


def _clock(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    return {"now": sim.clock.now()}


def _advance_clock(sim: Simulator, data: dict[str, Any]) -> dict[str, Any]:
    return {"now": sim.clock.advance(float(data.get("advance", 0)))}


def _create_batch(sim: Simulator, data: dict[str, Any]) -> dict[str, Any]:
    return sim.create_batch(**data)


def _batch_ids(sim: Simulator, _: dict[str, Any]) -> dict[str, Any]:
    return {"ids": sim.batch_ids()}


# Control routes under /_sim: no auth and not counted, so a demo or benchmark can drive the world.
CONTROL_ACTIONS: dict[tuple[str, str], Callable[[Simulator, dict[str, Any]], dict[str, Any]]] = {
    ("GET", "/stats"): _stats,
    ("POST", "/stats/reset"): _reset_stats,
    ("GET", "/faults"): _list_faults,
    ("POST", "/faults"): _add_fault,
    ("DELETE", "/faults"): _clear_faults,
    ("GET", "/clock"): _clock,
    ("POST", "/clock"): _advance_clock,
    ("GET", "/batches"): _batch_ids,
    ("POST", "/batches"): _create_batch,
}
CANCEL_OUTSIDE = re.compile(r"^/batches/(?P<id>[^/]+)/cancel-outside$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Keep-alive, like the SDK's pooled connections expect.
    server_version = "sim-openai"
    timeout = 120  # Idle keep-alive connections are dropped after this many seconds.
    server: _Server

    # -- plumbing ------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm meeting the
        # client's delayed ACK adds ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    @property
    def sim(self) -> Simulator:
        return self.server.simulator

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise ApiError(400, "Request body too large.")
        return self.rfile.read(length) if length else b""

    def _headers(self, status: int, content_type: str, length: int, extra: dict[str, str] | None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(length))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self._headers(status, "application/json", len(payload), headers)
        self.wfile.write(payload)

    def _send_error(self, error: ApiError) -> None:
        self._send_json(error.status, error.body(), error.headers)

    def _send_stream(self, length: int, chunks: Iterable[bytes]) -> None:
        self._headers(200, "application/octet-stream", length, None)
        for chunk in chunks:
            self.wfile.write(chunk)

    def _abort(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a reset, not an orderly end.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._drop()

    def _drop(self) -> None:
        self.close_connection = True
        self.rfile.close()  # The socket only really closes once no file object refers to it.
        self.connection.close()

    # -- dispatch ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
            control = CONTROL_PATH.match(url.path)
            if control:
                self._control(method, control.group("route"), body)
            else:
                self._api(method, url.path, parse_qs(url.query))
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # The client went away mid-answer.
        except Exception:  # A simulator bug must still answer, like a real server error.
            traceback.print_exc(file=sys.stderr)
            self._send_error(status_error(500))

    # -- the OpenAI API ------------------------------------------------------------------------

    def _api(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        found = API_PATH.match(path)
        route = found.group("route") if found else path
        route_key, object_id = match_route(method, route) if found else (f"{method} (unknown route)", None)
        self.sim.record_request(route_key)
        if self._apply_faults(method, route, route_key):
            return
        self._authenticate()
        if object_id is None and route_key != "GET /batches":
            raise invalid_url(method, path)
        self._serve(route_key, object_id, query)

    def _apply_faults(self, method: str, route: str, route_key: str) -> bool:
        """Delay and/or answer for the faults that hit this request; True if it is answered."""
        for fault in self.sim.take_faults(method, route, route_key):
            if fault.kind == "latency":
                self.server.sleep(fault.seconds)
            else:
                self._answer_fault(fault)
                return True
        return False

    def _answer_fault(self, fault: Fault) -> None:
        if fault.kind == "status":
            self._send_error(status_error(fault.status, fault.retry_after))
        elif fault.kind == "malformed":
            self._headers(200, "application/json", len(MALFORMED_BODY), None)
            self.wfile.write(MALFORMED_BODY)
        elif fault.kind == "empty_page":
            self._send_json(200, empty_page())
        elif fault.kind == "timeout":
            self.server.sleep(fault.hold_seconds)
            self._drop()
        else:
            self._abort()

    def _authenticate(self) -> None:
        bearer = self.headers.get("authorization", "")
        keys = [bearer[7:].strip()] if bearer[:7].lower() == "bearer " else []
        if self.headers.get("api-key"):
            keys.append(self.headers["api-key"].strip())
        keys = [key for key in keys if key]
        if not keys:
            raise ApiError(401, MISSING_KEY)
        if not any(self.sim.key_is_valid(key) for key in keys):
            raise wrong_key(keys[0])

    def _serve(self, route_key: str, object_id: str | None, query: dict[str, list[str]]) -> None:
        if route_key == "GET /batches":
            self._send_json(200, self.sim.list_batches(*self._page_params(query)))
        elif route_key == "GET /batches/{id}":
            self._send_json(200, self.sim.get_batch(str(object_id)))
        elif route_key == "POST /batches/{id}/cancel":
            self._send_json(200, self.sim.cancel(str(object_id)))
        elif route_key == "GET /files/{id}":
            self._send_json(200, self.sim.get_file(str(object_id)))
        else:
            self._send_stream(*self.sim.file_content(str(object_id)))

    @staticmethod
    def _page_params(query: dict[str, list[str]]) -> tuple[str | None, int]:
        after = (query.get("after") or [""])[-1] or None
        limits = query.get("limit")
        if not limits:
            return after, DEFAULT_LIMIT
        try:
            return after, int(limits[-1])
        except ValueError:
            raise ApiError(
                400,
                f"Invalid 'limit': expected an integer, but got '{limits[-1]}' instead.",
                param="limit",
                code="invalid_type",
            ) from None

    # -- control routes (no auth, not counted) -------------------------------------------------

    def _control(self, method: str, route: str, body: bytes) -> None:
        data = self._json_body(body)
        cancel = CANCEL_OUTSIDE.match(route)
        if method == "POST" and cancel:
            self._send_json(200, self.sim.cancel_outside(cancel.group("id")))
            return
        action = CONTROL_ACTIONS.get((method, route))
        if action is None:
            raise invalid_url(method, f"/_sim{route}")
        try:
            result = action(self.sim, data)
        except (TypeError, ValueError) as error:
            raise ApiError(400, str(error)) from None  # A bad body from the caller, not a bug.
        self._send_json(200, result)

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except ValueError:
            raise ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Do not wait for handler threads on close: a held "timeout" fault or an idle keep-alive
    # connection would block stop() for as long as it lasts.
    block_on_close = False

    def __init__(self, address: tuple[str, int], simulator: Simulator, verbose: bool) -> None:
        self.simulator = simulator
        self.verbose = verbose
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def sleep(self, seconds: float) -> None:
        # Wakes early on stop(), so a held request never outlives the server.
        self.stopping.wait(seconds)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # Already closed by its handler.
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.verbose:
            super().handle_error(request, client_address)


class SimulatorServer:
    """Serves a Simulator over HTTP/1.1 in a daemon thread.

    `url` is the API base (`http://host:port/v1`); control routes live at `http://host:port/_sim/`.
    """

    def __init__(
        self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False
    ) -> None:
        self.simulator = simulator
        self._server = _Server((host, port), simulator, verbose)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimulatorServer:
        if self._thread is None:
            # A short poll interval keeps stop() fast (tests start and stop a server each).
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.stopping.set()
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.close_connections()
        self._server.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
