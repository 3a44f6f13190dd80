"""Security: upstream and user text stays text, ids in URLs never reach the upstream, log-in is
guarded (safe redirects, rate limits, CSRF, expiring sessions), pages carry a strict CSP and the
usual headers, and the API key appears nowhere: not in a page, a log, the database or output."""

from __future__ import annotations

import copy
import datetime as dt
import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from django.apps import apps
from django.http import HttpResponse, StreamingHttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme

from batches import audit, sync
from batches.accounts import Account
from batches.client import UpstreamClient
from batches.models import AuditEntry, Batch, Session, SyncState
from batches.sessions import SessionStore
from tests import conftest as guard
from tests.conftest import SIM_KEY, csrf_checked_client
from tests.factories import batch_json, offline_account

LIST_URL = reverse("batch_list")
LOGIN_URL = reverse("login")

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;"
JS_IN_ATTRIBUTE = re.compile(r"""(?:href|src|action|formaction)\s*=\s*["']?\s*javascript:""", re.I)


@pytest.fixture
def offline(settings: Any) -> Account:
    account = offline_account("sim")
    settings.UPSTREAM_ACCOUNTS = {"sim": account}
    return account


@pytest.fixture
def upstream_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP attempt of the upstream client, whatever its base URL."""
    made: list[str] = []

    def refuse(self: UpstreamClient, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        made.append(f"{method} {path}")
        raise AssertionError(f"nothing may go upstream here: {method} {path}")

    monkeypatch.setattr(UpstreamClient, "_attempt", refuse)
    return made


# --- Upstream and user text is rendered as text -------------------------------------------------


def _hostile_batch(status: str, **kwargs: Any) -> dict[str, Any]:
    batch = batch_json(
        status,
        model=f"{SCRIPT}model",
        metadata={
            f"{SCRIPT}k": f"{SCRIPT}v",
            "description": IMG,
            "link": JS_URL,
            JS_URL: f"{IMG}value",
        },
        **kwargs,
    )
    batch["errors"] = {
        "object": "list",
        "data": [{"code": SCRIPT, "message": IMG, "param": JS_URL, "line": 1}],
    }
    return batch


@pytest.mark.django_db
def test_hostile_upstream_and_user_text_is_escaped_on_every_page_and_fragment(
    offline, alice_client, bob_client
):
    running = _hostile_batch("in_progress", total=100)
    sync.store_batches("sim", [running])
    SyncState.objects.create(
        account="sim",
        last_success_at=timezone.now() - dt.timedelta(minutes=5),
        consecutive_failures=1,
        last_error={
            "title": "Upstream server error",
            "kind": "server",
            "status": 500,
            "message": f"{SCRIPT} {IMG} {JS_URL}",
            "request_id": IMG,
            "error_type": SCRIPT,
        },
        last_warning=f"{SCRIPT}{IMG}",
    )
    audit.append(
        event=AuditEntry.Event.CANCEL,
        outcome=AuditEntry.Outcome.REFUSED,
        actor_username="alice",
        account="sim",
        batch_id=running["id"],
        status_before="in_progress",
        reason=f"{SCRIPT} {IMG} {JS_URL}",
        user_agent=SCRIPT,
        http_status=409,
        error_type=SCRIPT,
        error_code=IMG,
        error_message=f"{SCRIPT}{IMG}",
        request_id=IMG,
    )
    pages = {
        "list": (alice_client, LIST_URL, {}),
        "list-htmx": (alice_client, LIST_URL, {"HX-Request": "true"}),
        "detail": (alice_client, reverse("batch_detail", args=["sim", running["id"]]), {}),
        "row": (alice_client, reverse("batch_row", args=["sim", running["id"]]), {"HX-Request": "true"}),
        "live": (alice_client, reverse("batch_live", args=["sim", running["id"]]), {"HX-Request": "true"}),
        "audit": (bob_client, reverse("audit_list"), {}),
    }

    for name, (client, url, headers) in pages.items():
        response = client.get(url, headers=headers)
        assert response.status_code == 200, name
        body = response.content.decode()
        assert "<script>alert" not in body, name
        assert "<img src=x" not in body, name
        assert not JS_IN_ATTRIBUTE.search(body), name
        # Shown, as text.
        assert SCRIPT_ESCAPED in body, name
        assert IMG_ESCAPED in body, name


# --- Ids in URLs ---------------------------------------------------------------------------------


def _bad_batch_ids(real: str) -> list[str]:
    """Path segments as they appear in a URL (already percent-encoded where needed)."""
    cyrillic = real.replace("a", "\u0430", 1)  # CYRILLIC SMALL LETTER A
    fullwidth = real.replace("batch_", "\uff42\uff41\uff54\uff43\uff48_", 1)
    return [
        "batch_x/../../files",
        "batch_x%2F..%2Ffiles",
        "%2e%2e",
        "..",
        "batch_" + "a" * 200,
        quote("b\u0430tch_abc"),
        quote(cyrillic),
        quote(fullwidth),
        quote(real[:-1] + "\uff11"),  # a fullwidth digit
        real + "%00",
        real + "%0A",
        real + "%0D%0A",
        "batch_abc%00",
        "batch_abc%0A",
        quote(real + " "),
    ]


def _bad_file_ids(real: str) -> list[str]:
    return [
        "file-x/../../batches",
        "file-x%2F..%2Fbatches",
        "%2e%2e",
        "file-" + "a" * 200,
        quote(real.replace("f", "\u0192", 1)),
        quote(real.replace("file-", "\uff46ile-", 1)),
        real + "%00",
        real + "%0A",
    ]


@pytest.fixture
def mirrored(simulator: Any, sim_account: Account) -> dict[str, Any]:
    """The simulator's batches in the mirror: one running (cancellable), one with an output file."""
    result = sync.sync_account(sim_account)
    assert result is not None and result.ok
    running = Batch.objects.filter(status="in_progress").first()
    finished = Batch.objects.filter(status="completed").exclude(output_file_id="").first()
    assert running is not None and finished is not None
    return {"running": running, "finished": finished}


@pytest.mark.django_db
def test_malformed_ids_in_urls_are_404_and_nothing_goes_upstream(
    simulator, mirrored, alice_client, monkeypatch, settings
):
    settings.SYNC_ON_DEMAND = True
    refreshes: list[Any] = []
    monkeypatch.setattr(sync, "refresh_stale_in_background", lambda *a, **k: refreshes.append(a) or [])
    attempts: list[str] = []
    original = UpstreamClient._attempt
    monkeypatch.setattr(
        UpstreamClient,
        "_attempt",
        lambda self, method, path, *a, **k: attempts.append(path) or original(self, method, path, *a, **k),
    )
    running, finished = mirrored["running"], mirrored["finished"]
    # The spies see a well-formed request: a valid live poll asks for a refresh.
    assert alice_client.get(reverse("batch_live", args=["sim", running.batch_id])).status_code == 200
    assert len(refreshes) == 1
    refreshes.clear()
    simulator.reset_stats()
    audit_before = AuditEntry.objects.count()

    checked = 0
    for bad in {*_bad_batch_ids(running.batch_id), *_bad_batch_ids(finished.batch_id)}:
        base = f"/batches/sim/{bad}/"
        for url in (base, base + "row/", base + "live/", base + f"files/{finished.output_file_id}/"):
            response = alice_client.get(url)
            assert response.status_code == 404, (url, response.status_code)
        response = alice_client.post(base + "cancel/", {"reason": "probe", "where": "row"})
        assert response.status_code == 404, (base, response.status_code)
        checked += 1
    file_base = f"/batches/sim/{finished.batch_id}/files/"
    for bad in _bad_file_ids(finished.output_file_id):
        response = alice_client.get(f"{file_base}{bad}/")
        assert response.status_code == 404, (bad, response.status_code)
        checked += 1

    assert checked >= 20
    assert simulator.total_requests() == 0
    assert attempts == [] and refreshes == []
    assert AuditEntry.objects.count() == audit_before
    running.refresh_from_db()
    assert running.cancel_requested_by == "" and running.status == "in_progress"


# --- Log-in ----------------------------------------------------------------------------------


def _login(client: Client, username: str, password: str, ip: str = "10.0.0.1", **data: str) -> Any:
    return client.post(LOGIN_URL, {"username": username, "password": password, **data}, REMOTE_ADDR=ip)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "target",
    ["//evil.example", "https://evil.example", "/\\evil.example", "\\\\evil.example", "https:evil.example",
     "///evil.example", " //evil.example", "http://testserver.evil.example/"],
)  # fmt: skip
def test_login_next_cannot_redirect_off_site(bob, target):
    response = _login(Client(), "bob", "bob-password-1", next=target)

    assert response.status_code == 302
    location = response["Location"]
    assert url_has_allowed_host_and_scheme(location, allowed_hosts={"testserver"})
    assert location == LIST_URL


@pytest.mark.django_db
def test_login_next_on_the_site_is_followed(bob):
    response = _login(Client(), "bob", "bob-password-1", next="/audit/?user=alice")

    assert response.status_code == 302 and response["Location"] == "/audit/?user=alice"


@pytest.mark.django_db
def test_login_is_locked_per_user_and_address_after_the_failure_limit(bob, settings):
    limit = settings.AXES_FAILURE_LIMIT
    assert limit == 5
    client = Client()
    for attempt in range(1, limit):
        response = _login(client, "bob", "wrong-password", ip="10.0.0.1")
        assert response.status_code == 200, attempt  # the form again, with its error

    # The limit is reached: from now on even the right password is refused, with the lock-out page.
    for password in ("wrong-password", "wrong-password", "bob-password-1"):
        response = _login(client, "bob", password, ip="10.0.0.1")
        assert response.status_code == 429
        assert "Too many failed log-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session

    # The same user from another address still gets in, and so does another user from the first.
    elsewhere = _login(Client(), "bob", "bob-password-1", ip="10.0.0.2")
    assert elsewhere.status_code == 302 and elsewhere["Location"] == LIST_URL


@pytest.mark.django_db
def test_another_user_from_a_locked_address_can_still_log_in(bob, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT + 1):
        _login(Client(), "bob", "wrong-password", ip="10.0.0.1")

    response = _login(Client(), "alice", "alice-password-1", ip="10.0.0.1")

    assert response.status_code == 302


@pytest.mark.django_db
def test_a_correct_password_before_the_limit_resets_the_count(bob, settings):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _login(Client(), "bob", "wrong-password").status_code == 200
    assert _login(Client(), "bob", "bob-password-1").status_code == 302

    for _ in range(limit - 1):
        assert _login(Client(), "bob", "wrong-password").status_code == 200
    assert _login(Client(), "bob", "bob-password-1").status_code == 302


# --- CSRF ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_login_without_a_csrf_token_is_refused(bob):
    client = Client(enforce_csrf_checks=True)
    assert _login(client, "bob", "bob-password-1").status_code == 403

    # With the token from the form, the same POST goes through.
    form = client.get(LOGIN_URL).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token
    response = _login(client, "bob", "bob-password-1", csrfmiddlewaretoken=token.group(1))
    assert response.status_code == 302


@pytest.mark.django_db
def test_logout_without_a_csrf_token_is_refused(bob):
    client = csrf_checked_client(bob)

    assert client.post(reverse("logout")).status_code == 403
    assert client.get(LIST_URL).status_code == 200  # still signed in


@pytest.mark.django_db
def test_cancel_without_a_csrf_token_is_refused_and_nothing_happens(offline, alice, upstream_attempts):
    running = batch_json("in_progress")
    sync.store_batches("sim", [running])
    client = csrf_checked_client(alice)

    response = client.post(reverse("batch_cancel", args=["sim", running["id"]]), {"reason": "no token"})

    assert response.status_code == 403
    assert upstream_attempts == []
    assert not AuditEntry.objects.exists()
    assert Batch.objects.get(batch_id=running["id"]).cancel_requested_by == ""


# --- Sessions -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_sessions_expire_after_session_cookie_age(bob, settings):
    assert 0 < settings.SESSION_COOKIE_AGE <= 24 * 3600
    client = Client()
    assert _login(client, "bob", "bob-password-1").status_code == 302
    assert int(client.cookies[settings.SESSION_COOKIE_NAME]["max-age"]) == settings.SESSION_COOKIE_AGE
    assert client.get(LIST_URL).status_code == 200

    # SESSION_COOKIE_AGE later: the row's expiry has passed.
    key = client.session.session_key
    assert Session.objects.filter(session_key=key).update(
        expire_date=timezone.now() - dt.timedelta(seconds=1)
    )

    response = client.get(LIST_URL)
    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN_URL}?next=")


@pytest.mark.django_db
def test_a_session_deleted_from_the_database_is_signed_out_at_the_next_request(bob_client):
    # What a logout handled by another worker, or an admin ending sessions, does: no copy of the
    # session kept in any cache outlives its row.
    assert bob_client.get(LIST_URL).status_code == 200
    Session.objects.filter(session_key=bob_client.session.session_key).delete()

    response = bob_client.get(LIST_URL)
    assert response.status_code == 302
    assert response["Location"].startswith(f"{LOGIN_URL}?next=")


@pytest.mark.django_db
def test_a_logout_signs_the_session_out_for_every_copy_of_its_cookie(bob_client):
    stolen = Client()
    stolen.cookies = copy.deepcopy(bob_client.cookies)
    assert stolen.get(LIST_URL).status_code == 200

    assert bob_client.post(reverse("logout")).status_code == 302
    assert stolen.get(LIST_URL).status_code == 302


@pytest.mark.django_db
def test_a_session_whose_data_was_tampered_with_is_signed_out(bob_client):
    assert bob_client.get(LIST_URL).status_code == 200  # its data decoded (and remembered) once
    key = bob_client.session.session_key
    data = Session.objects.get(session_key=key).session_data
    Session.objects.filter(session_key=key).update(
        session_data=data[:-4] + ("AAAA" if data[-4:] != "AAAA" else "BBBB")
    )

    assert bob_client.get(LIST_URL).status_code == 302


@pytest.mark.django_db
def test_each_request_gets_its_own_copy_of_the_session_data(bob_client):
    key = bob_client.session.session_key
    first = SessionStore(key)
    first["seen"] = ["batch_1"]  # changed by one request, not saved
    assert "seen" not in SessionStore(key).load()


@pytest.mark.django_db
def test_deleting_a_user_deletes_their_sessions(bob_client, bob, alice_client):
    assert Session.objects.filter(user=bob).count() == 1
    bob.delete()
    assert not Session.objects.filter(user_id=bob.pk).exists()
    assert Session.objects.count() == 1  # alice's


# --- Headers and the CSP ------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_carry_a_strict_csp_with_nonces_and_no_inline_styles_or_handlers(offline, alice_client):
    running = batch_json("in_progress", total=100)
    failed = batch_json("failed")
    sync.store_batches("sim", [running, failed])
    pages = {
        "login": (Client(), LOGIN_URL),
        "list": (alice_client, LIST_URL),
        "detail": (alice_client, reverse("batch_detail", args=["sim", running["id"]])),
        "failed detail": (alice_client, reverse("batch_detail", args=["sim", failed["id"]])),
        "audit": (alice_client, reverse("audit_list")),
    }
    for name, (client, url) in pages.items():
        response = client.get(url)
        assert response.status_code == 200, name
        csp = response["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if " " in d.strip())
        nonce = re.search(r"'nonce-([A-Za-z0-9_+/=-]+)'", directives["script-src"])
        assert nonce, (name, csp)
        assert f"'nonce-{nonce.group(1)}'" in directives["style-src"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, name
        assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"

        body = response.content.decode()
        scripts = re.findall(r"<script\b[^>]*>", body, re.I)
        styles = re.findall(r"<style\b[^>]*>", body, re.I)
        assert scripts, name
        for tag in scripts + styles:
            assert f'nonce="{nonce.group(1)}"' in tag, (name, tag)
        tags = re.findall(r"<[a-zA-Z][^>]*>", body)
        assert not [t for t in tags if re.search(r"\sstyle\s*=", t, re.I)], name
        assert not [t for t in tags if re.search(r"\son[a-z]+\s*=", t, re.I)], name
        assert not [t for t in tags if re.search(r"\shx-on[:-]", t, re.I)], name
        assert not JS_IN_ATTRIBUTE.search(body), name


# --- The API key appears nowhere ------------------------------------------------------------


def test_leak_guard_finds_a_planted_key_but_not_its_masked_echo():
    assert guard.find_secrets(f"before {SIM_KEY} after") == [SIM_KEY]
    assert guard.find_secrets("Incorrect API key provided: sk-si***al.") == []
    assert guard.find_secrets("nothing here") == []


@pytest.mark.django_db
def test_leak_guard_checks_responses_against_the_configured_account_keys(settings):
    planted = "sk-planted-for-the-guard-0123456789"
    settings.UPSTREAM_ACCOUNTS = {"x": Account(name="x", api_key=planted)}

    found = guard.response_leaks(HttpResponse(f"<p>{planted}</p>"), "here")
    assert len(found) == 1 and "here" in found[0] and planted not in found[0]
    assert guard.response_leaks(HttpResponse("<p>clean</p>"), "here") == []
    # A header counts too; a streamed body is left unread (it would be consumed).
    leaky_header = HttpResponse("clean")
    leaky_header["X-Debug"] = SIM_KEY
    assert guard.response_leaks(leaky_header, "here")
    assert guard.response_leaks(StreamingHttpResponse(iter([SIM_KEY.encode()])), "here") == []


def test_leak_guard_checks_captured_output_and_failure_text():
    captured = SimpleNamespace(
        nodeid="t::a", sections=[("Captured log call", f"key={SIM_KEY}")], longrepr=None
    )
    failed = SimpleNamespace(nodeid="t::b", sections=[], longrepr="x", longreprtext=f"assert {SIM_KEY!r}")
    clean = SimpleNamespace(nodeid="t::c", sections=[("Captured stdout call", "fine")], longrepr=None)

    assert len(guard.report_leaks(captured)) == 1
    assert len(guard.report_leaks(failed)) == 1
    assert guard.report_leaks(clean) == []
    assert SIM_KEY not in " ".join(guard.report_leaks(captured) + guard.report_leaks(failed))


@pytest.mark.django_db
def test_leak_guard_sees_every_test_client_response(bob, monkeypatch):
    assert getattr(Client.request, "secret_guard", False)
    found: list[str] = []
    monkeypatch.setattr(guard, "leaks", found)

    # The login form echoes the user name it was given: a key typed there comes back.
    _login(Client(), SIM_KEY, "wrong-password")

    assert len(found) == 1 and "POST /login/" in found[0]


@pytest.mark.django_db
def test_the_key_is_stored_nowhere_in_the_database_after_sync_and_a_rejected_key(
    simulator, sim_server, settings
):
    good = Account(name="sim", api_key=SIM_KEY, base_url=sim_server.url)
    wrong = Account(name="wrong", api_key="sk-wrong-key-abcdef0123456789", base_url=sim_server.url)
    settings.UPSTREAM_ACCOUNTS = {"sim": good, "wrong": wrong}
    assert sync.run_cycle(good).ok
    assert sync.run_cycle(wrong).error is not None

    for model in apps.get_models():
        for row in model.objects.values():
            text = repr(row)
            assert SIM_KEY not in text and wrong.api_key not in text, model.__name__
