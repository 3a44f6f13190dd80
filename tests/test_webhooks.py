"""Outgoing webhooks: events queue deliveries, a delivery loop sends them to a live local receiver,
signed, retried with backoff, claimed once across loops, to checked URLs only; nothing waits."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import logging
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from batches import webhooks
from batches.cancel import request_cancel
from batches.models import Batch, Webhook, WebhookDelivery
from batches.simulator import Simulator
from batches.sync import run_cycle, store_batches
from batches.webhook_url import resolve_webhook_url, validate_webhook_url
from tests.conftest import child_env, sqlite_url, start_manage, stop_process
from tests.factories import batch_json, offline_account

TERMINAL = "batch.terminal"
CANCEL = "batch.cancel_requested"
DASHBOARD = "https://dash.example.com"


# --- a local receiver ---------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """What the webhook's server does: answer 500 for the first `fail_first` requests (or all
    with `always_fail`), sleep `delay` seconds, or redirect; it records every request."""

    port: int = 0
    fail_first: int = 0
    always_fail: bool = False
    delay: float = 0.0
    redirect_to: str = ""
    pair_up: bool = False
    error_body: str = "upstream exploded"
    # Answer 200 with headers sent one line every `trickle` seconds (`trickle_lines` of them).
    trickle: float = 0.0
    trickle_lines: int = 0
    # Answer 200 without a Content-Length, and keep the connection open a while.
    no_length: bool = False
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    concurrent: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?team=ml"


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with receiver.lock:
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            number = len(receiver.requests)
            receiver.in_flight += 1
            if receiver.in_flight > 1:
                receiver.concurrent.set()
        try:
            if receiver.pair_up:
                receiver.concurrent.wait(20)
            if receiver.delay:
                time.sleep(receiver.delay)
        finally:
            with receiver.lock:
                receiver.in_flight -= 1
        if receiver.redirect_to:
            self.send_response(302)
            self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if receiver.trickle:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(receiver.trickle_lines):
                self.wfile.flush()
                time.sleep(receiver.trickle)
                self.wfile.write(f"X-Slow-{i}: 1\r\n".encode())
            self.wfile.write(b"Content-Length: 2\r\n\r\nok")
            return
        if receiver.no_length:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok")
            self.wfile.flush()
            time.sleep(2 * webhooks.READ_TIMEOUT)
            return
        failing = receiver.always_fail or number <= receiver.fail_first
        status, answer = (500, receiver.error_body) if failing else (200, "ok")
        data = answer.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.block_on_close = False
    server.receiver = Receiver(port=server.server_address[1])  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.receiver  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture
def private_ok(settings: Any) -> None:
    """The receiver listens on 127.0.0.1: only reachable with WEBHOOK_ALLOW_PRIVATE."""
    settings.WEBHOOK_ALLOW_PRIVATE = True
    settings.DASHBOARD_URL = DASHBOARD


@pytest.fixture
def simulator(sim_clock: Any) -> Simulator:
    """A small finished world (overrides the 300 batches): only the batches a test makes move.

    Not batches=0: an empty Simulator is falsy, and make_sim_server(simulator=...) would replace it.
    """
    return Simulator(batches=3, active=0, seed=7, clock=sim_clock, cancel_delay=5)


def hook(receiver: Receiver, **fields: Any) -> Webhook:
    defaults: dict[str, Any] = {"account": "sim", "url": receiver.url, "kind": "generic", "secret": "s3cret"}
    return Webhook.objects.create(**{**defaults, **fields})


def queue(webhook: Webhook, n: int = 1) -> list[WebhookDelivery]:
    return [
        WebhookDelivery.objects.create(webhook=webhook, event=TERMINAL, payload={"event": TERMINAL, "n": i})
        for i in range(n)
    ]


def make_due(delivery: WebhookDelivery) -> None:
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        next_attempt_at=timezone.now() - dt.timedelta(seconds=1)
    )


def detail_url(batch_id: str, account: str = "sim") -> str:
    return DASHBOARD + reverse("batch_detail", args=[account, batch_id])


def finish(batch_id: str, capture: Any, **overrides: Any) -> Batch:
    """A batch seen running, then seen completed: one terminal transition, signalled after commit."""
    store_batches("sim", [batch_json("in_progress", id=batch_id, **overrides)])
    with capture(execute=True):
        store_batches("sim", [batch_json("completed", id=batch_id, **overrides)])
    return Batch.objects.get(batch_id=batch_id)


# --- events queue, the loop sends ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_terminal_transition_sends_one_signed_generic_delivery(
    receiver, private_ok, django_capture_on_commit_callbacks
):
    webhook = hook(receiver)
    hook(receiver, account="other")  # another account's webhook: not for this batch
    hook(receiver, events=[CANCEL])  # wants cancels only
    hook(receiver, enabled=False)

    batch = finish("batch_terminal01", django_capture_on_commit_callbacks, metadata={"description": "eval"})

    delivery = WebhookDelivery.objects.get()
    assert (delivery.webhook, delivery.event, delivery.status) == (webhook, TERMINAL, "pending")
    assert receiver.requests == []  # queued only: nothing is sent by the event itself

    result = webhooks.deliver_due()

    assert (result.delivered, result.retrying, result.failed) == (1, 0, 0)
    [request] = receiver.requests
    assert request.path == "/hook?team=ml"
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.headers["X-Batch-Dashboard-Event"] == TERMINAL
    assert request.headers["X-Batch-Dashboard-Delivery"] == str(delivery.pk)
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Batch-Dashboard-Signature"], expected)
    assert request.json() == {
        "event": "batch.terminal",
        "account": "sim",
        "batch_id": "batch_terminal01",
        "status": "completed",
        "previous_status": "in_progress",
        "request_counts": {"total": 100, "completed": 100, "failed": 0},
        "model": "gpt-4o-mini",
        "endpoint": "/v1/chat/completions",
        "description": "eval",
        "url": detail_url("batch_terminal01"),
        "actor": None,
        "reason": None,
        "at": batch.completed_at.isoformat().replace("+00:00", "Z"),
    }
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert delivery.delivered_at is not None and delivery.last_response == "ok"
    assert delivery.locked_by == "" and delivery.locked_until is None
    assert webhooks.deliver_due().sent == 0  # delivered once, never again


@pytest.mark.django_db
def test_only_transitions_from_running_count_not_first_sightings_or_later_changes(
    receiver, private_ok, settings, django_capture_on_commit_callbacks
):
    settings.DASHBOARD_URL = ""
    hook(receiver, account="*")
    with django_capture_on_commit_callbacks(execute=True):
        store_batches("sim", [batch_json("completed", id="batch_seenended01")])  # first sighting
        store_batches("sim", [batch_json("in_progress", id="batch_running0001")])
        store_batches("sim", [batch_json("finalizing", id="batch_running0001")])  # not terminal
    assert not WebhookDelivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        store_batches("sim", [batch_json("completed", id="batch_running0001")])
        store_batches("sim", [batch_json("expired", id="batch_running0001")])  # terminal to terminal

    delivery = WebhookDelivery.objects.get()
    assert delivery.payload["previous_status"] == "finalizing"
    assert "url" not in delivery.payload  # no DASHBOARD_URL, no link


@pytest.mark.django_db
def test_slack_body_is_text_plus_blocks_with_upstream_text_escaped(
    receiver, private_ok, django_capture_on_commit_callbacks
):
    hook(receiver, kind="slack", secret="")
    evil = "<script>alert(1)</script> & <!channel> <https://evil.example|click>"

    finish("batch_slack00001", django_capture_on_commit_callbacks, metadata={"description": evil})
    webhooks.deliver_due()

    [request] = receiver.requests
    assert "X-Batch-Dashboard-Signature" not in request.headers  # no secret, no signature
    message = request.json()
    assert set(message) == {"text", "blocks"}
    text = message["text"]
    assert text.startswith(f"Batch <{detail_url('batch_slack00001')}|batch_slack00001> on sim completed")
    assert "100/100 requests completed, 0 failed" in text
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;!channel&gt; &lt;https://evil.example|click&gt;"
        in text
    )
    assert "<script>" not in request.body.decode() and "<!channel>" not in text
    assert message["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    context = message["blocks"][1]
    assert context["type"] == "context"
    assert "gpt-4o-mini" in context["elements"][0]["text"]
    assert "\n" not in text


def test_slack_escaping_follows_slacks_rules():
    assert webhooks.slack_escape("a & b < c > d") == "a &amp; b &lt; c &gt; d"
    assert webhooks.slack_escape("&lt;") == "&amp;lt;"  # escaped once, & first


@pytest.mark.django_db
def test_a_dashboard_cancel_sends_who_and_why_then_the_terminal_state_names_them_too(
    alice, receiver, private_ok, simulator, sim_clock, sim_account, django_capture_on_commit_callbacks
):
    hook(receiver)
    obj = simulator.create_batch(status="in_progress", total=100, metadata={"description": "nightly"})
    store_batches("sim", [obj])
    batch = Batch.objects.get(batch_id=obj["id"])

    with django_capture_on_commit_callbacks(execute=True):
        outcome = request_cancel(
            user=alice, account=sim_account, batch=batch, reason="wrong <prompt> & file",
            client_ip="203.0.113.7", user_agent="test",
        )  # fmt: skip
    assert outcome.accepted

    delivery = WebhookDelivery.objects.get()
    assert delivery.event == CANCEL
    webhooks.deliver_due()
    [request] = receiver.requests
    payload = request.json()
    assert payload["event"] == CANCEL
    assert (payload["actor"], payload["reason"]) == ("alice", "wrong <prompt> & file")
    assert (payload["status"], payload["previous_status"]) == ("cancelling", "in_progress")
    assert (payload["batch_id"], payload["description"]) == (obj["id"], "nightly")
    assert payload["at"] == outcome.entry.at.isoformat().replace("+00:00", "Z")

    # The cancel takes effect upstream; the next sync sees `cancelled`: a terminal event.
    sim_clock.advance(simulator.cancel_delay + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert run_cycle(sim_account).ok
    terminal = WebhookDelivery.objects.get(event=TERMINAL)
    assert terminal.payload["status"] == "cancelled"
    assert terminal.payload["previous_status"] == "cancelling"
    assert (terminal.payload["actor"], terminal.payload["reason"]) == ("alice", "wrong <prompt> & file")


@pytest.mark.django_db
def test_the_cancel_view_queues_the_delivery_as_alice(
    alice_client, receiver, private_ok, simulator, sim_account, django_capture_on_commit_callbacks
):
    hook(receiver, kind="slack")
    obj = simulator.create_batch(status="in_progress", total=10)
    store_batches("sim", [obj])
    batch = Batch.objects.get(batch_id=obj["id"])

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(
            reverse("batch_cancel", args=["sim", batch.batch_id]),
            {"where": "row", "reason": "budget"},
            headers={"HX-Request": "true"},
        )
    assert response.status_code == 200
    assert receiver.requests == []  # the view did not wait for the webhook

    webhooks.deliver_due()
    [request] = receiver.requests
    assert request.json()["text"].startswith(f"alice cancelled batch <{detail_url(batch.batch_id)}|")
    assert request.json()["text"].endswith("(was in_progress): budget")


@pytest.mark.django_db
def test_a_refused_cancel_sends_nothing(alice, receiver, private_ok, simulator, sim_account):
    hook(receiver)
    obj = simulator.create_batch(status="completed", total=10)
    store_batches("sim", [obj])
    Batch.objects.filter(batch_id=obj["id"]).update(status="in_progress")  # the mirror is behind
    batch = Batch.objects.get(batch_id=obj["id"])

    outcome = request_cancel(
        user=alice, account=sim_account, batch=batch, reason="x", client_ip="", user_agent=""
    )

    assert not outcome.accepted
    assert not WebhookDelivery.objects.filter(event=CANCEL).exists()


# --- retries and giving up -----------------------------------------------------------------------


@pytest.mark.django_db
def test_failures_are_retried_with_backoff_then_delivered(receiver, private_ok):
    receiver.fail_first = 2
    [delivery] = queue(hook(receiver))

    assert webhooks.deliver_due().retrying == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert delivery.last_response == "upstream exploded" and delivery.last_error == "HTTP 500"
    assert delivery.next_attempt_at - delivery.last_attempt_at == dt.timedelta(seconds=30)

    assert webhooks.deliver_due().sent == 0  # not due yet
    assert len(receiver.requests) == 1

    make_due(delivery)
    webhooks.deliver_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 2)
    assert delivery.next_attempt_at - delivery.last_attempt_at == dt.timedelta(minutes=2)

    make_due(delivery)
    assert webhooks.deliver_due().delivered == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert (delivery.last_response, delivery.last_error) == ("ok", "")
    assert len(receiver.requests) == 3
    # Every attempt of one delivery carries the same delivery id, for receivers to drop repeats.
    assert {r.headers["X-Batch-Dashboard-Delivery"] for r in receiver.requests} == {str(delivery.pk)}


@pytest.mark.django_db
def test_it_gives_up_after_the_last_backoff_with_the_last_answer_recorded(receiver, private_ok):
    receiver.always_fail = True
    receiver.error_body = "é" * 1500
    [delivery] = queue(hook(receiver))

    waits = []
    for _ in range(6):
        make_due(delivery)
        webhooks.deliver_due()
        delivery.refresh_from_db()
        if delivery.status == "pending":
            waits.append((delivery.next_attempt_at - delivery.last_attempt_at).total_seconds())

    assert waits == [30, 120, 600, 3600, 6 * 3600]
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 6, 500)
    assert delivery.last_response == "é" * 1000
    assert delivery.delivered_at is None
    make_due(delivery)
    assert webhooks.deliver_due().sent == 0  # failed stays failed
    assert len(receiver.requests) == 6

    # The admin's "retry now" starts it over.
    receiver.always_fail = False
    assert webhooks.retry_now(WebhookDelivery.objects.all()) == 1
    assert webhooks.deliver_due().delivered == 1


@pytest.mark.django_db
def test_redirects_are_not_followed(receiver, private_ok):
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    [delivery] = queue(hook(receiver))

    webhooks.deliver_due()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert "redirects are not followed" in delivery.last_error
    assert len(receiver.requests) == 1


@pytest.mark.django_db
def test_a_receiver_trickling_its_answer_is_given_up_on_at_the_deadline(receiver, private_ok, monkeypatch):
    monkeypatch.setattr(webhooks, "SEND_SECONDS", 1.0)
    receiver.trickle, receiver.trickle_lines = 0.4, 10  # each line within the read timeout, 4 s in all
    [delivery] = queue(hook(receiver))

    started = time.monotonic()
    assert webhooks.deliver_due().retrying == 1
    assert time.monotonic() - started < 3.5  # not held until the receiver is done

    delivery.refresh_from_db()
    assert delivery.last_error == webhooks.GAVE_UP


@pytest.mark.django_db
def test_an_answer_without_a_length_on_a_connection_kept_open_counts_at_once(receiver, private_ok):
    receiver.no_length = True
    [delivery] = queue(hook(receiver))

    assert webhooks.deliver_due().delivered == 1

    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code, delivery.last_response) == ("delivered", 200, "ok")


@pytest.mark.django_db
def test_a_delivery_for_a_disabled_webhook_fails_without_retries(receiver, private_ok):
    [delivery] = queue(hook(receiver, enabled=False))

    webhooks.deliver_due()

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.last_error == "the webhook is disabled"
    assert receiver.requests == []


@pytest.mark.django_db
def test_an_unreachable_receiver_is_an_error_not_a_crash(private_ok):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    webhook = Webhook.objects.create(account="sim", url=f"http://127.0.0.1:{port}/")
    [delivery] = queue(webhook)

    assert webhooks.deliver_due().retrying == 1

    delivery.refresh_from_db()
    assert delivery.last_status_code is None
    assert "ConnectionRefusedError" in delivery.last_error


# --- claims: several loops, one send -------------------------------------------------------------


@pytest.mark.django_db
def test_a_claim_is_exclusive_until_its_lease_runs_out(receiver, private_ok):
    [delivery] = queue(hook(receiver))

    first = webhooks.claim_next("loop-1")
    assert first is not None and first.pk == delivery.pk
    assert webhooks.claim_next("loop-2") is None
    # The first loop died mid-send: once its lease has run out, another loop takes the delivery over.
    later = timezone.now() + dt.timedelta(seconds=webhooks.LEASE_SECONDS + 1)
    taken = webhooks.claim_next("loop-2", now=later)
    assert taken is not None and taken.pk == delivery.pk
    # The late first loop's answer is not recorded over the second loop's claim.
    assert webhooks.record(first, webhooks.Attempt(status_code=200), "loop-1") == ""
    assert webhooks.record(taken, webhooks.Attempt(status_code=200), "loop-2") == "delivered"


def test_two_concurrent_delivery_loops_send_each_delivery_once(child_db, receiver):
    # Each loop sends one delivery at a time: two requests in flight at once come from both loops.
    # The first request is held until a second one arrives, so both loops surely take part.
    receiver.pair_up = True
    receiver.delay = 0.02
    seed_child_db(child_db, receiver.url, deliveries=40)
    env = child_env(DATABASE_URL=sqlite_url(child_db), WEBHOOK_ALLOW_PRIVATE="true")
    loops = [start_manage("deliver_webhooks", "--interval", "0.2", env=env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while len(receiver.requests) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # time for a duplicate, were there one
        outputs = []
        for process in loops:
            process.send_signal(signal.SIGTERM)
            outputs.append(process.communicate(timeout=15))
    finally:
        for process in loops:
            stop_process(process)

    assert all(process.returncode == 0 for process in loops), [err for _, err in outputs]
    sent = sorted(int(r.headers["X-Batch-Dashboard-Delivery"]) for r in receiver.requests)
    assert sent == list(range(1, 41))
    assert all(": attempt 1 delivered" in err for _, err in outputs), "both loops took part"  # the log
    with sqlite3.connect(child_db) as db:
        assert db.execute("SELECT DISTINCT status, attempts FROM batches_webhookdelivery").fetchall() == [
            ("delivered", 1)
        ]


# --- where a webhook may point -------------------------------------------------------------------


REFUSED_UNLESS_ALLOWED = [
    "http://10.0.0.1/hook",
    "http://127.0.0.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/",
    "http://localhost:9000/",  # a name that resolves to loopback
]


@pytest.mark.parametrize("url", REFUSED_UNLESS_ALLOWED)
def test_private_targets_are_refused_unless_allowed(url, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValidationError, match="non-public address"):
        validate_webhook_url(url)

    settings.WEBHOOK_ALLOW_PRIVATE = True
    validate_webhook_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
        "https://",
        "http://u:p@8.8.8.8/",
    ],
)
def test_only_http_and_https_urls_to_a_host_are_allowed(url, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True
    with pytest.raises(ValidationError):
        validate_webhook_url(url)


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_host_names_resolving_to_a_private_address_are_refused(monkeypatch, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    fake_dns(
        monkeypatch,
        {
            "hooks.example.com": ["93.184.216.34"],
            "internal.example.com": ["10.1.2.3"],
            "mixed.example.com": ["93.184.216.34", "192.168.1.10"],
        },
    )

    target = resolve_webhook_url("https://hooks.example.com/services/T0/B0?x=1")
    assert (target.host, target.port, target.path) == ("hooks.example.com", 443, "/services/T0/B0?x=1")
    assert target.addresses == ("93.184.216.34",)
    for host in ("internal.example.com", "mixed.example.com"):
        with pytest.raises(ValidationError, match="non-public"):
            validate_webhook_url(f"https://{host}/")
    validate_webhook_url("https://8.8.8.8/hook")  # a public literal needs no lookup
    spaced = resolve_webhook_url("https://hooks.example.com/a b/é?q=x%20y")
    assert spaced.path == "/a%20b/%C3%A9?q=x%20y"


@pytest.mark.django_db
def test_the_url_is_checked_again_at_send_time_against_dns_rebinding(receiver, monkeypatch, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    webhook = Webhook(account="*", url=f"http://hooks.example.com:{receiver.port}/hook")
    webhook.full_clean()  # public when saved
    webhook.save()
    [delivery] = queue(webhook)

    fake_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})  # ... private when sent
    webhooks.deliver_due()

    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.last_error.startswith("refused: ") and "127.0.0.1" in delivery.last_error
    assert receiver.requests == []

    # Allowed: it connects to the address it checked, with the name in the Host header.
    settings.WEBHOOK_ALLOW_PRIVATE = True
    make_due(delivery)
    assert webhooks.deliver_due().delivered == 1
    assert receiver.requests[0].headers["Host"] == f"hooks.example.com:{receiver.port}"


@pytest.mark.django_db
def test_the_model_clean_checks_account_events_and_url(settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    settings.WEBHOOK_ALLOW_PRIVATE = False

    with pytest.raises(ValidationError) as error:
        Webhook(account="nope", url="http://10.0.0.1/", events=["batch.exploded"]).full_clean()
    assert set(error.value.message_dict) == {"account", "events", "url"}

    with pytest.raises(ValidationError) as error:
        Webhook(account="sim", url="ftp://example.com/", events=[]).full_clean()
    assert set(error.value.message_dict) == {"events", "url"}

    Webhook(account="sim", url="https://8.8.8.8/hook").full_clean()
    Webhook(account="*", url="https://8.8.8.8/hook", events=[CANCEL]).full_clean()


# --- nothing waits for a webhook -----------------------------------------------------------------


@pytest.mark.django_db
def test_a_sync_cycle_that_ends_a_batch_does_not_wait_for_a_slow_receiver(
    receiver, private_ok, simulator, sim_clock, sim_account, django_capture_on_commit_callbacks
):
    receiver.delay = 5.0
    hook(receiver)
    simulator.create_batch(status="in_progress", total=10, in_progress_seconds=60, finalizing_seconds=1)
    run_cycle(sim_account)

    sim_clock.advance(3600)
    with django_capture_on_commit_callbacks(execute=True):
        assert run_cycle(sim_account).ok

    # Queued, not sent: the cycle never talked to the (5 s slow) receiver.
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 0
    assert receiver.requests == []


@pytest.mark.django_db
def test_a_failing_receiver_of_the_signal_does_not_break_the_sync(
    monkeypatch, receiver, private_ok, django_capture_on_commit_callbacks
):
    hook(receiver)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(webhooks, "enqueue", broken)

    batch = finish("batch_broken0001", django_capture_on_commit_callbacks)

    assert batch.status == "completed"
    assert not WebhookDelivery.objects.exists()


# --- the commands --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deliver_webhooks_once_sends_what_is_due(receiver, private_ok, caplog):
    receiver.fail_first = 1
    webhook = hook(receiver)
    queue(webhook, 2)
    out = io.StringIO()

    with caplog.at_level(logging.INFO, logger="batches.webhooks"):
        call_command("deliver_webhooks", "--once", stdout=out)

    assert "1 delivered, 1 to retry, 0 failed" in out.getvalue()
    logged = caplog.text
    assert f"to webhook #{webhook.pk} (127.0.0.1): attempt 1 delivered" in logged
    assert "(HTTP 500)" in logged
    assert "/hook" not in logged  # the host, never the URL (a Slack URL is a credential)


@pytest.mark.django_db
def test_the_sync_worker_delivers_after_its_round(receiver, private_ok, sim_account):
    [delivery] = queue(hook(receiver))

    call_command("sync_batches", "--once", stdout=io.StringIO())

    delivery.refresh_from_db()
    assert delivery.status == "delivered"


def seed_child_db(path: Any, url: str, *, deliveries: int) -> None:
    """Webhook #1 to `url` with `deliveries` due deliveries (#1..#n), in a child process's database."""
    now = "2000-01-01 00:00:00"
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO batches_webhook (id, account, url, kind, events, enabled, secret, created_at)"
            " VALUES (1, '*', ?, 'generic', '[\"batch.terminal\"]', 1, '', ?)",
            [url, now],
        )
        db.executemany(
            "INSERT INTO batches_webhookdelivery (id, webhook_id, event, payload, status, attempts,"
            " next_attempt_at, locked_by, last_response, last_error, created_at)"
            " VALUES (?, 1, 'batch.terminal', ?, 'pending', 0, ?, '', '', '', ?)",
            [(n, json.dumps({"event": TERMINAL, "n": n}), now, now) for n in range(1, deliveries + 1)],
        )


def test_deliver_webhooks_stops_cleanly_on_sigterm(child_db, receiver):
    seed_child_db(child_db, receiver.url, deliveries=1)
    env = child_env(DATABASE_URL=sqlite_url(child_db), WEBHOOK_ALLOW_PRIVATE="true")
    process = start_manage("deliver_webhooks", "--interval", "0.2", env=env)
    try:
        deadline = time.monotonic() + 30
        while not receiver.requests and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert receiver.requests, "the loop delivered the queued delivery"
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    finally:
        stop_process(process)

    assert process.returncode == 0, stderr
    assert "received SIGTERM" in stdout
    assert stdout.rstrip().endswith("deliver_webhooks: stopped")
    with sqlite3.connect(child_db) as db:
        assert db.execute("SELECT status, attempts FROM batches_webhookdelivery").fetchall() == [
            ("delivered", 1)
        ]


# --- the admin -----------------------------------------------------------------------------------


@pytest.fixture
def admin_client(db: None) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "root-password-1"))
    return client


@pytest.mark.django_db
def test_the_admin_creates_webhooks_keeps_the_secret_hidden_and_sends_a_test(
    admin_client, receiver, settings
):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    settings.WEBHOOK_ALLOW_PRIVATE = True
    add = reverse("admin:batches_webhook_add")
    data = {"account": "sim", "url": receiver.url, "kind": "generic", "events": [TERMINAL, CANCEL]}

    response = admin_client.post(add, {**data, "enabled": "on", "secret": "top-secret-value"})

    assert response.status_code == 302, response.content.decode()[:2000]
    webhook = Webhook.objects.get()
    assert (webhook.secret, webhook.events, webhook.enabled) == ("top-secret-value", [TERMINAL, CANCEL], True)
    change = reverse("admin:batches_webhook_change", args=[webhook.pk])
    assert "top-secret-value" not in admin_client.get(change).content.decode()
    # Saved again without a secret: the secret stays; "clear secret" removes it.
    admin_client.post(change, {**data, "enabled": "on", "secret": ""})
    webhook.refresh_from_db()
    assert webhook.secret == "top-secret-value"
    admin_client.post(change, {**data, "secret": "", "clear_secret": "on"})
    webhook.refresh_from_db()
    assert (webhook.secret, webhook.enabled) == ("", False)

    listing = admin_client.get(reverse("admin:batches_webhook_changelist"), {"kind": "generic"})
    assert listing.status_code == 200 and "/hook?team" not in listing.content.decode()

    admin_client.post(
        reverse("admin:batches_webhook_changelist"),
        {"action": "send_test", "_selected_action": [webhook.pk]},
    )
    test = WebhookDelivery.objects.get()
    assert (test.event, test.payload["actor"]) == ("webhook.test", "root")
    assert webhooks.deliver_due().delivered == 1  # sent although the webhook is disabled
    assert receiver.requests[0].json()["event"] == "webhook.test"


@pytest.mark.django_db
def test_the_admin_refuses_a_private_url_and_an_unknown_account(admin_client, settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    settings.WEBHOOK_ALLOW_PRIVATE = False

    response = admin_client.post(
        reverse("admin:batches_webhook_add"),
        {"account": "sim", "url": "http://169.254.169.254/", "kind": "slack", "events": [TERMINAL]},
    )

    assert response.status_code == 200
    assert "non-public address" in response.content.decode()
    assert not Webhook.objects.exists()


@pytest.mark.django_db
def test_deliveries_are_read_only_with_a_retry_action(admin_client, receiver, private_ok):
    [delivery] = queue(hook(receiver))
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=6)
    changelist = reverse("admin:batches_webhookdelivery_changelist")

    assert admin_client.get(changelist, {"status__exact": "failed"}).status_code == 200
    assert (
        admin_client.get(reverse("admin:batches_webhookdelivery_change", args=[delivery.pk])).status_code
        == 200
    )
    assert admin_client.get(reverse("admin:batches_webhookdelivery_add")).status_code == 403
    admin_client.post(changelist, {"action": "retry", "_selected_action": [delivery.pk]})

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)
    assert delivery.next_attempt_at <= timezone.now()


@pytest.mark.django_db
def test_webhooks_are_for_superusers_only(alice: User):
    alice.is_staff = True
    alice.save()
    client = Client()
    client.force_login(alice)

    assert client.get(reverse("admin:batches_webhook_changelist")).status_code == 403
    assert client.get(reverse("admin:batches_webhookdelivery_changelist")).status_code == 403
