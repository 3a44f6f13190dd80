"""`/metrics`: well-formed Prometheus text (checked by a small parser of the format), values that
match the mirror, label escaping, a constant number of queries, and who may scrape."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches import audit
from batches.models import SyncState
from batches.sync import store_batches
from tests.factories import batch_json, offline_account

URL = reverse("metrics")
TOKEN = "metrics-token-0123456789abcdef"

# --- a small parser of the text exposition format 0.0.4 -----------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL_RE.match(text, position)
        assert match, f"bad labels at {text[position:]!r}"
        name, raw = match.group(1), match.group(2)
        assert name not in labels, f"label {name} twice"
        labels[name] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], raw)
        position = match.end()
    return labels


def parse(text: str) -> dict[str, Any]:
    """{family: {"type", "help", "samples": {frozenset(labels.items()): value}}}, checking the
    format: a newline at the end, HELP and TYPE once before a family's samples, valid names and
    values, each series once."""
    assert text.endswith("\n")
    families: dict[str, Any] = {}
    current = None
    for line in text[:-1].split("\n"):
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, help = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in families
            families[name] = {"help": help, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current and families[name]["type"] is None
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families[name]["type"] = kind
        else:
            assert not line.startswith("#"), line
            match = _SAMPLE_RE.fullmatch(line)
            assert match, f"bad sample line {line!r}"
            name, labels, value = match.groups()
            assert name == current and families[name]["type"], f"{name} before its HELP/TYPE"
            key = frozenset(parse_labels(labels or "").items())
            assert key not in families[name]["samples"], f"{line!r} twice"
            assert value in ("+Inf", "-Inf", "NaN") or re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", value), (
                value
            )
            families[name]["samples"][key] = float(value)
    return families


def value(families: dict[str, Any], family: str, **labels: str) -> float:
    return families[family]["samples"][frozenset(labels.items())]


def test_the_parser_reads_escapes_and_refuses_malformed_text():
    text = '# HELP x_total Things.\n# TYPE x_total counter\nx_total{a="q\\"b\\\\c\\nd",b=""} 3\n'
    assert value(parse(text), "x_total", a='q"b\\c\nd', b="") == 3
    for bad in (
        "x 1\n",  # no HELP/TYPE
        '# HELP x X.\n# TYPE x gauge\nx{a="1"} 1',  # no final newline
        '# HELP x X.\n# TYPE x gauge\nx{a="un"escaped"} 1\n',
        '# HELP x X.\n# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',
        "# HELP x X.\n# TYPE x gauge\nx one\n",
    ):
        with pytest.raises(AssertionError):
            parse(bad)


# --- the metrics ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def accounts(settings):  # type: ignore[no-untyped-def]
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account("sim"), "eu": offline_account("eu")}
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "::1"]
    settings.CLIENT_IP_HEADER = ""


def scrape(**extra: Any) -> dict[str, Any]:
    response = Client().get(URL, **extra)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    return parse(response.content.decode())


def cancel(outcome: str, batch_id: str = "batch_abc") -> None:
    audit.append(
        event="cancel", outcome=outcome, account="sim", batch_id=batch_id, status_before="in_progress"
    )


@pytest.mark.django_db
def test_values_match_the_mirror():
    store_batches(
        "sim",
        [
            batch_json("completed", total=100),
            batch_json("completed", total=10, failed=2),
            batch_json("in_progress", total=40),
            batch_json("failed", total=None),
        ],
    )
    store_batches("eu", [batch_json("expired", total=20, usage=False)])
    now = timezone.now()
    SyncState.objects.create(account="sim", last_success_at=now - dt.timedelta(seconds=42))
    SyncState.objects.create(
        account="eu",
        last_success_at=now - dt.timedelta(hours=1),
        consecutive_failures=3,
        last_error={"kind": "rate_limited", "status": 429, "title": "Rate limited"},
    )
    for outcome in ("accepted", "accepted", "refused", "error"):
        cancel(outcome)
    audit.append(event="outside", outcome="observed", account="sim", batch_id="batch_zzz")

    m = scrape()

    assert m["batch_dashboard_batches"]["type"] == "gauge"
    assert value(m, "batch_dashboard_batches", account="sim", status="completed") == 2
    assert value(m, "batch_dashboard_batches", account="sim", status="in_progress") == 1
    assert value(m, "batch_dashboard_batches", account="sim", status="failed") == 1
    assert value(m, "batch_dashboard_batches", account="sim", status="cancelled") == 0
    assert value(m, "batch_dashboard_batches", account="eu", status="expired") == 1
    # Completed: 100 + 8 + 20 (half of 40) on sim; the expired one did half of its 20.
    assert value(m, "batch_dashboard_requests", account="sim", kind="completed") == 128
    assert value(m, "batch_dashboard_requests", account="sim", kind="failed") == 2
    assert value(m, "batch_dashboard_requests", account="eu", kind="completed") == 10
    # The factory's usage per completed request: 1000 input (250 cached), 400 output (100 reasoning).
    for kind, per_request in (
        ("input", 1000),
        ("cached", 250),
        ("output", 400),
        ("reasoning", 100),
        ("total", 1400),
    ):
        assert value(m, "batch_dashboard_tokens", account="sim", kind=kind) == 128 * per_request
        assert value(m, "batch_dashboard_tokens", account="eu", kind=kind) == 0

    assert 42 <= value(m, "batch_dashboard_sync_age_seconds", account="sim") < 60
    assert 3600 <= value(m, "batch_dashboard_sync_age_seconds", account="eu") < 3620
    assert value(m, "batch_dashboard_sync_consecutive_failures", account="sim") == 0
    assert value(m, "batch_dashboard_sync_consecutive_failures", account="eu") == 3
    failing = m["batch_dashboard_sync_failing"]["samples"]
    assert {dict(k)["kind"] for k, v in failing.items() if v == 1 and dict(k)["account"] == "eu"} == {
        "rate_limited"
    }
    assert not any(v for k, v in failing.items() if dict(k)["account"] == "sim")
    assert value(m, "batch_dashboard_sync_failing", account="sim", kind="rate_limited") == 0

    assert m["batch_dashboard_cancels_total"]["type"] == "counter"
    assert value(m, "batch_dashboard_cancels_total", outcome="accepted") == 2
    assert value(m, "batch_dashboard_cancels_total", outcome="refused") == 1
    assert value(m, "batch_dashboard_cancels_total", outcome="error") == 1
    assert value(m, "batch_dashboard_cancels_total", outcome="in_flight") == 0
    # An "outside" cancel is not one requested from the dashboard.
    assert ("outcome", "observed") not in {
        item for key in m["batch_dashboard_cancels_total"]["samples"] for item in key
    }


@pytest.mark.django_db
def test_an_empty_mirror_still_exports_every_series():
    m = scrape()
    assert value(m, "batch_dashboard_batches", account="eu", status="validating") == 0
    assert value(m, "batch_dashboard_tokens", account="sim", kind="cached") == 0
    # Never synced: infinitely old, so that an age alert fires.
    assert math.isinf(value(m, "batch_dashboard_sync_age_seconds", account="sim"))
    assert value(m, "batch_dashboard_cancels_total", outcome="accepted") == 0


@pytest.mark.django_db
def test_label_values_are_escaped():
    odd = 'we"ird\\stat\nus'
    store_batches("sim", [batch_json(odd[:20])])
    text = Client().get(URL).content.decode()
    assert 'status="we\\"ird\\\\stat\\nus"' in text
    assert value(parse(text), "batch_dashboard_batches", account="sim", status=odd) == 1


@pytest.mark.django_db
def test_query_count_does_not_grow_with_the_mirror(django_assert_num_queries):
    store_batches("sim", [batch_json()])
    with CaptureQueriesContext(connection) as few:
        scrape()
    store_batches("sim", [batch_json(s) for s in ("completed", "failed", "in_progress") for _ in range(30)])
    store_batches("eu", [batch_json() for _ in range(30)])
    for outcome in ("accepted", "refused"):
        cancel(outcome)
    SyncState.objects.create(account="sim", last_success_at=timezone.now())
    with django_assert_num_queries(len(few.captured_queries)):
        scrape()
    assert len(few.captured_queries) <= 4


# --- who may scrape -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_local_addresses_may_scrape_by_default():
    assert Client().get(URL, REMOTE_ADDR="127.0.0.1").status_code == 200
    assert Client().get(URL, REMOTE_ADDR="::1").status_code == 200


@pytest.mark.django_db
def test_other_addresses_get_a_403(client, bob_client):
    assert Client().get(URL, REMOTE_ADDR="203.0.113.7").status_code == 403
    # Signing in changes nothing.
    assert bob_client.get(URL, REMOTE_ADDR="203.0.113.7").status_code == 403


@pytest.mark.django_db
def test_allowed_networks(settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "2001:db8::/32"]
    assert Client().get(URL, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert Client().get(URL, REMOTE_ADDR="2001:db8::5").status_code == 200
    assert Client().get(URL, REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert Client().get(URL, REMOTE_ADDR="127.0.0.1").status_code == 403
    assert Client().get(URL, REMOTE_ADDR="not-an-ip").status_code == 403


@pytest.mark.django_db
def test_the_token_lets_any_address_scrape(settings):
    settings.METRICS_TOKEN = TOKEN
    far = {"REMOTE_ADDR": "203.0.113.7"}
    assert Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **far).status_code == 200
    assert Client().get(URL, HTTP_AUTHORIZATION=f"bearer {TOKEN}", **far).status_code == 200
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", TOKEN, f"Basic {TOKEN}"):
        assert Client().get(URL, HTTP_AUTHORIZATION=wrong, **far).status_code == 403, wrong


@pytest.mark.django_db
def test_no_token_is_accepted_when_none_is_configured(settings):
    settings.METRICS_TOKEN = ""
    assert Client().get(URL, HTTP_AUTHORIZATION="Bearer ", REMOTE_ADDR="203.0.113.7").status_code == 403


@pytest.mark.django_db
def test_behind_a_proxy_the_configured_client_header_counts(settings):
    settings.CLIENT_IP_HEADER = "HTTP_X_REAL_IP"
    # The proxy connects from 127.0.0.1; the client behind it is far away.
    assert Client().get(URL, REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP="203.0.113.7").status_code == 403
    assert Client().get(URL, REMOTE_ADDR="127.0.0.1", HTTP_X_REAL_IP="127.0.0.1").status_code == 200


@pytest.mark.django_db
def test_only_get_and_head():
    assert Client().head(URL).status_code == 200
    assert Client().post(URL).status_code == 405
