"""Who may do what, for every view in dashboard/urls.py and both methods.

anonymous → the login page (GET and POST alike; nothing happens);
charlie (signed in, no role) → 403 everywhere;
bob (viewer) → reads everything, 403 on cancel, and nothing reaches the upstream;
alice (operator) → reads everything and cancels.
A wrong method is 405 for everyone. The mirror holds one running batch of the live simulator, so
"nothing sent upstream" is read from the simulator's own request counts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils.html import strip_tags

from batches.models import AuditEntry, Batch
from batches.sync import store_batches
from tests.factories import upstream_cancels

HTMX = {"HX-Request": "true"}


@pytest.fixture
def running(simulator: Any, sim_account: Any) -> Batch:
    store_batches("sim", [simulator.create_batch(status="in_progress", total=100)])
    return Batch.objects.get()


@pytest.fixture
def finished(simulator: Any, sim_account: Any) -> Batch:
    store_batches("sim", [simulator.create_batch(status="completed", total=3)])
    return Batch.objects.get(status="completed")


def read_urls(batch: Batch) -> list[str]:
    """Every GET view behind the viewer role."""
    args = [batch.account, batch.batch_id]
    return [
        reverse("batch_list"),
        reverse("batch_detail", args=args),
        reverse("batch_row", args=args),
        reverse("batch_live", args=args),
        reverse("audit_list"),
        reverse("audit_export", args=["csv"]),
        reverse("audit_export", args=["jsonl"]),
    ]


def cancel_url(batch: Batch) -> str:
    return reverse("batch_cancel", args=[batch.account, batch.batch_id])


@pytest.fixture
def anonymous() -> Client:
    return Client()


# --- anonymous -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_reads_are_sent_to_the_login_page(anonymous, running):
    for url in read_urls(running):
        response = anonymous.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next="), url


@pytest.mark.django_db
def test_anonymous_cancel_is_sent_to_the_login_page_and_nothing_happens(anonymous, simulator, running):
    response = anonymous.post(cancel_url(running), {"where": "row"}, headers=HTMX)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert simulator.total_requests() == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_anonymous_file_download_is_sent_to_the_login_page(anonymous, simulator, finished):
    url = reverse("file_download", args=[finished.account, finished.batch_id, finished.output_file_id])

    assert anonymous.get(url).status_code == 302
    assert simulator.total_requests() == 0


@pytest.mark.django_db
def test_an_htmx_read_after_the_session_ended_takes_the_page_to_the_login_and_back(bob_client, running):
    """Not the login form swapped into a row: the page goes, and comes back after signing in."""
    page = reverse("batch_list") + "?status=in_progress&q=owner"
    bob_client.logout()

    for url in read_urls(running):
        response = bob_client.get(url, headers={**HTMX, "HX-Current-URL": "http://testserver" + page})
        assert response.status_code == 200 and response.content == b"", url
        assert response["HX-Redirect"] == reverse("login") + "?next=" + quote(page), url

    login = bob_client.post(response["HX-Redirect"], {"username": "bob", "password": "bob-password-1"})
    assert login.status_code == 302 and login["Location"] == page


@pytest.mark.django_db
@pytest.mark.parametrize("current", [None, "", "http://evil.example//evil.example/x", "javascript:alert(1)"])
def test_a_page_address_that_is_not_this_sites_is_not_where_the_login_comes_back_to(
    anonymous, running, current
):
    headers = HTMX if current is None else {**HTMX, "HX-Current-URL": current}

    response = anonymous.get(reverse("batch_live", args=[running.account, running.batch_id]), headers=headers)

    assert response["HX-Redirect"] == reverse("login")


@pytest.mark.django_db
def test_public_endpoints_need_no_login(anonymous):
    assert anonymous.get(reverse("healthz")).status_code == 200
    assert anonymous.get(reverse("login")).status_code == 200
    assert anonymous.get("/").status_code == 302


# --- charlie: signed in, no role ------------------------------------------------------------------


@pytest.mark.django_db
def test_user_without_a_role_is_refused_everywhere(charlie_client, simulator, running, finished):
    for url in read_urls(running):
        assert charlie_client.get(url).status_code == 403, url
    download = reverse("file_download", args=[finished.account, finished.batch_id, finished.output_file_id])
    assert charlie_client.get(download).status_code == 403
    assert charlie_client.post(cancel_url(running), {"where": "row"}, headers=HTMX).status_code == 403
    assert simulator.total_requests() == 0
    assert not AuditEntry.objects.exists()


@pytest.mark.django_db
def test_the_refusal_says_who_is_signed_in_and_which_role_it_takes(charlie_client, running):
    response = charlie_client.get(reverse("batch_list"))

    text = " ".join(strip_tags(response.content.decode()).split())
    assert response.status_code == 403
    assert "charlie · no role" in text
    assert "You are signed in as charlie, and your account may not see the batches." in text
    assert "Watching batches takes the Viewers role" in text


@pytest.mark.django_db
def test_an_htmx_read_refused_for_want_of_a_role_reloads_the_page(charlie_client, running):
    """htmx swaps no 403: without the reload, a page open when its role went would look live."""
    for url in read_urls(running):
        response = charlie_client.get(url, headers=HTMX)
        assert response.status_code == 403 and response["HX-Refresh"] == "true", url

    assert "HX-Refresh" not in charlie_client.get(reverse("batch_list"))


# --- bob: viewer ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["bob_client", "alice_client"])
def test_viewer_and_operator_read_every_page_and_fragment(request, who, running):
    client = request.getfixturevalue(who)
    for url in read_urls(running):
        assert client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_viewer_sees_no_cancel_button_and_no_dialog(bob_client, running):
    for url in (reverse("batch_list"), reverse("batch_detail", args=[running.account, running.batch_id])):
        page = bob_client.get(url).content.decode()
        assert "data-cancel-url" not in page, url
        assert 'id="cancel-dialog"' not in page, url


@pytest.mark.django_db
def test_viewer_may_download_a_batch_file(bob_client, finished):
    url = reverse("file_download", args=[finished.account, finished.batch_id, finished.output_file_id])

    assert bob_client.get(url).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("htmx", [True, False])
def test_viewer_cannot_cancel_and_nothing_is_sent_upstream(bob_client, simulator, running, htmx):
    response = bob_client.post(
        cancel_url(running), {"where": "row", "reason": "x"}, headers=HTMX if htmx else {}
    )

    assert response.status_code == 403
    assert upstream_cancels(simulator) == 0
    assert simulator.total_requests() == 0
    assert not AuditEntry.objects.exists()
    running.refresh_from_db()
    assert running.cancel_requested_at is None and running.status == "in_progress"


@pytest.mark.django_db
def test_viewer_has_no_admin(bob_client):
    response = bob_client.get(reverse("admin:index"))

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_the_audit_needs_its_own_permission(bob, bob_client, running):
    # A role that shows batches but not who cancelled them (the Viewers group grants both).
    bob.groups.clear()
    bob.user_permissions.add(Permission.objects.get(codename="view_batch"))

    assert bob_client.get(reverse("batch_list")).status_code == 200
    assert 'href="/audit/"' not in bob_client.get(reverse("batch_list")).content.decode()
    for url in (reverse("audit_list"), reverse("audit_export", args=["csv"])):
        assert bob_client.get(url).status_code == 403, url


# --- alice: operator -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_operator_sees_the_cancel_button_and_the_shared_dialog(alice_client, running):
    for url in (reverse("batch_list"), reverse("batch_detail", args=[running.account, running.batch_id])):
        page = alice_client.get(url).content.decode()
        assert f'data-cancel-url="{cancel_url(running)}"' in page, url
        assert page.count('id="cancel-dialog"') == 1, url


@pytest.mark.django_db
def test_operator_can_cancel(alice_client, simulator, running):
    response = alice_client.post(cancel_url(running), {"where": "row"}, headers=HTMX)

    assert response.status_code == 200
    assert upstream_cancels(simulator) == 1
    assert AuditEntry.objects.get().outcome == "accepted"


# --- methods -------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["anonymous", "charlie_client", "bob_client", "alice_client"])
def test_wrong_methods_are_405_for_everyone(request, simulator, running, finished, who):
    client: Client = request.getfixturevalue(who)
    download = reverse("file_download", args=[finished.account, finished.batch_id, finished.output_file_id])

    for url in [*read_urls(running), download]:
        assert client.post(url).status_code == 405, url
    assert client.get(cancel_url(running)).status_code == 405
    assert client.put(cancel_url(running)).status_code == 405
    assert simulator.total_requests() == 0
    assert not AuditEntry.objects.exists()
