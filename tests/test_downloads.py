"""Downloads of a batch's output and error files: streamed from the upstream, only the batch's own
files, upstream failures explained with their request id, and never the key."""

from __future__ import annotations

import pytest
import responses
from django.urls import reverse

from batches.models import Batch
from batches.sync import run_cycle, store_batches
from tests.conftest import SIM_KEY
from tests.factories import batch_json, offline_account

OFFLINE_API = "http://127.0.0.1:9/v1"


def download_url(batch: Batch | dict, file_id: str) -> str:
    batch_id = batch.batch_id if isinstance(batch, Batch) else batch["id"]
    return reverse("file_download", args=["sim", batch_id, file_id])


def sim_bytes(simulator, file_id: str) -> bytes:  # type: ignore[no-untyped-def]
    _, chunks = simulator.file_content(file_id)
    return b"".join(chunks)


def assert_no_key(response, key: str) -> None:  # type: ignore[no-untyped-def]
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert key.encode() not in body
    assert all(key not in value for value in response.headers.values())


@pytest.mark.django_db
def test_streams_the_output_of_a_completed_batch_from_the_simulator(bob_client, simulator, sim_account):
    run_cycle(sim_account)
    batch = (
        Batch.objects.filter(status="completed").exclude(output_file_id="").order_by("-created_at").first()
    )
    assert batch is not None

    response = bob_client.get(download_url(batch, batch.output_file_id))

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Disposition"] == f'attachment; filename="{batch.batch_id}-output.jsonl"'
    body = b"".join(response.streaming_content)
    response.close()
    assert body == sim_bytes(simulator, batch.output_file_id)
    assert body.count(b"\n") == min(batch.request_completed, 5000)  # one result line per completed request
    assert SIM_KEY.encode() not in body
    assert all(SIM_KEY not in value for value in response.headers.values())


@pytest.mark.django_db
def test_streams_the_partial_output_of_a_cancelled_batch(bob_client, simulator, sim_account):
    created = simulator.create_batch(status="cancelled", total=400, progress=0.5, failed=0)
    run_cycle(sim_account)
    batch = Batch.objects.get(batch_id=created["id"])
    assert batch.status == "cancelled" and batch.output_file_id

    response = bob_client.get(download_url(batch, batch.output_file_id))

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body == sim_bytes(simulator, batch.output_file_id)
    assert body.count(b"\n") == batch.request_completed and 0 < batch.request_completed < 400  # partial


@pytest.mark.django_db
def test_streams_the_error_file(bob_client, simulator, sim_account):
    created = simulator.create_batch(status="completed", total=50, failed=5)
    run_cycle(sim_account)
    batch = Batch.objects.get(batch_id=created["id"])
    assert batch.error_file_id

    response = bob_client.get(download_url(batch, batch.error_file_id))

    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{batch.batch_id}-errors.jsonl"'
    assert b"".join(response.streaming_content) == sim_bytes(simulator, batch.error_file_id)


@pytest.mark.django_db
def test_only_the_batchs_own_output_and_error_files(bob_client, settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    mine, other = batch_json("completed", failed=2), batch_json("completed")
    store_batches("sim", [mine, other])

    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        for file_id in (other["output_file_id"], mine["input_file_id"], "file-unrelated123"):
            assert bob_client.get(download_url(mine, file_id)).status_code == 404
        for bad in ("file-..%2Fbatches", "file-\u0430bc", "file-" + "a" * 101, "not-a-file"):
            assert bob_client.get(download_url(mine, bad)).status_code == 404
        assert (
            bob_client.get(
                reverse("file_download", args=["sim", "batch_unknown1", mine["output_file_id"]])
            ).status_code
            == 404
        )

    assert len(upstream.calls) == 0


@pytest.mark.django_db
def test_upstream_not_found_shows_its_message_and_request_id(bob_client, simulator, sim_account):
    # A file the mirror knows but the upstream no longer has (deleted, or expired).
    gone = batch_json("completed", output_file_id="file-gone0001")
    store_batches("sim", [gone])

    response = bob_client.get(download_url(gone, "file-gone0001"))

    page = response.content.decode()
    assert response.status_code == 404
    assert "No such File object: file-gone0001" in page
    assert "Request id <code>req_" in page
    assert simulator.stats().get("GET /files/{id}/content") == 1
    assert SIM_KEY not in page


@pytest.mark.django_db
def test_upstream_failure_is_a_502_with_the_request_id(bob_client, settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    settings.UPSTREAM_MAX_RETRIES = 0
    obj = batch_json("completed")
    store_batches("sim", [obj])

    with responses.RequestsMock() as upstream:
        upstream.get(
            f"{OFFLINE_API}/files/{obj['output_file_id']}/content",
            status=503,
            json={"error": {"message": "The server is overloaded <b>now</b>.", "type": "server_error"}},
            headers={"x-request-id": "req_overloaded42"},
        )
        response = bob_client.get(download_url(obj, obj["output_file_id"]))

    page = response.content.decode()
    assert response.status_code == 502
    assert "The server is overloaded &lt;b&gt;now&lt;/b&gt;." in page
    assert "req_overloaded42" in page


@pytest.mark.django_db
def test_a_wrong_key_is_never_shown(bob_client, sim_server, settings):
    from batches.accounts import Account

    secret = "sk-wrong-secret-key-0123456789abcdef"
    settings.UPSTREAM_ACCOUNTS = {"sim": Account(name="sim", api_key=secret, base_url=sim_server.url)}
    settings.UPSTREAM_MAX_RETRIES = 0
    obj = batch_json("completed")
    store_batches("sim", [obj])

    response = bob_client.get(download_url(obj, obj["output_file_id"]))

    assert response.status_code == 502
    assert "Authentication failed" in response.content.decode()
    assert_no_key(response, secret)
    assert secret[3:20] not in response.content.decode()


class FakeContent:
    content_type = "application/octet-stream"
    content_length = 12

    def __init__(self) -> None:
        self.closed = False

    def iter_bytes(self, chunk_size: int = 65536):  # type: ignore[no-untyped-def]
        yield b'{"a": 1}\n'
        yield b'{"b":2}\n'

    def __iter__(self):  # type: ignore[no-untyped-def]
        return self.iter_bytes()

    def close(self) -> None:
        self.closed = True


@pytest.mark.django_db
def test_the_upstream_stream_is_closed_even_if_never_read(bob_client, settings, monkeypatch):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    obj = batch_json("completed")
    store_batches("sim", [obj])
    opened: list[FakeContent] = []

    class FakeClient:
        def open_file_content(self, file_id: str) -> FakeContent:
            opened.append(FakeContent())
            return opened[-1]

    monkeypatch.setattr("batches.sync.get_client", lambda account: FakeClient())

    response = bob_client.get(download_url(obj, obj["output_file_id"]))
    assert response.status_code == 200 and response["Content-Length"] == "12"
    response.close()  # the client went away before reading

    assert opened[0].closed


@pytest.mark.django_db
def test_access(client, charlie_client, bob_client, alice_client, settings):
    settings.UPSTREAM_ACCOUNTS = {"sim": offline_account()}
    obj = batch_json("completed")
    store_batches("sim", [obj])
    url = download_url(obj, obj["output_file_id"])

    with responses.RequestsMock(assert_all_requests_are_fired=False) as upstream:
        upstream.get(f"{OFFLINE_API}/files/{obj['output_file_id']}/content", body=b'{"id": "r1"}\n')
        anonymous = client.get(url)
        assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]
        assert charlie_client.get(url).status_code == 403
        assert len(upstream.calls) == 0
        for allowed in (bob_client, alice_client):
            response = allowed.get(url)
            assert response.status_code == 200
            assert b"".join(response.streaming_content) == b'{"id": "r1"}\n'
