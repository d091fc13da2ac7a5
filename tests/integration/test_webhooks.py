"""Signed webhooks on the real stack: the outbox, retries, order, and signatures that the
official `openai` SDK verifies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.stack import Stack
from trainyard.client import Client

pytestmark = pytest.mark.integration


class Receiver(ThreadingHTTPServer):
    """Records every POST; answers 503 to the first `fail_first` of them, then 200."""

    def __init__(self, fail_first: int) -> None:
        self.seen: list[tuple[dict[str, str], bytes, int]] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b, code in self.seen if code == 200]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        with self.server.lock:
            code = 503 if len(self.server.seen) < self.server.fail_first else 200
            self.server.seen.append((dict(self.headers.items()), body, code))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"x" * 3000)  # more than is kept

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_signed_deliveries_in_order_with_retries(
    stack: Stack, receiver: Receiver, corpus_file: Path
) -> None:
    key = stack.new_key("hooks")
    native = Client(stack.url, key)
    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"})
    types = ["job.queued", "job.cancelled", "dataset.ready"]
    created = http.post("/v1/webhooks", json={"url": receiver.url, "event_types": types})
    assert created.status_code == 201, created.text
    hook = created.json()
    secret = hook["secret"]
    assert secret.startswith("whsec_")
    assert "secret" not in http.get(f"/v1/webhooks/{hook['id']}").json()

    ds = native.wait_dataset(str(native.upload_dataset(corpus_file)["id"]))
    job = native.create_job({"dataset_id": ds["id"], "training": {"max_steps": 500}})
    native.request("POST", f"/v1/jobs/{job['id']}/cancel")

    got = until(lambda: len(receiver.delivered()) >= 3 and receiver.delivered())
    sdk = OpenAI(base_url=stack.url + "/v1", api_key=key)
    events = [sdk.webhooks.unwrap(body, headers, secret=secret) for headers, body in got]
    kinds = [(e.type, e.data.id) for e in events]  # type: ignore[union-attr]
    # In order per job; the dataset's refused first try does not hold the job's back.
    assert [k for k in kinds if k[1] == job["id"]] == [
        ("job.queued", job["id"]),
        ("job.cancelled", job["id"]),
    ]
    assert ("dataset.ready", ds["id"]) in kinds
    ids = {e.type: h["webhook-id"] for e, (h, _) in zip(events, got, strict=True)}
    assert len(set(ids.values())) == 3
    assert all(h["webhook-signature"].startswith("v1,") for h, _ in got)
    assert receiver.seen[0][0]["webhook-id"] == ids["dataset.ready"]  # refused, then sent again

    deliveries = {
        d["event_type"]: d for d in http.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["data"]
    }
    assert {t: d["id"] for t, d in deliveries.items()} == ids
    assert {d["status"] for d in deliveries.values()} == {"delivered"}
    first = deliveries["dataset.ready"]
    assert first["tries"] == 2 and first["response_code"] == 200
    assert deliveries["job.queued"]["tries"] == 1
    assert len(first["response_body"]) == 1024  # no more than a KB kept

    rotated = http.post(f"/v1/webhooks/{hook['id']}/rotate").json()
    assert rotated["secret"] != secret
    native.upload_dataset(corpus_file)
    headers, body = until(lambda: len(receiver.delivered()) >= 4 and receiver.delivered()[3])
    assert sdk.webhooks.unwrap(body, headers, secret=rotated["secret"]).type == "dataset.ready"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(body, headers, secret=secret)
    assert json.loads(body)["id"] == headers["webhook-id"]

    other = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.new_key('hooks-2')}"}
    )
    assert other.get(f"/v1/webhooks/{hook['id']}/deliveries").status_code == 404
    assert http.delete(f"/v1/webhooks/{hook['id']}").status_code == 204
    assert http.get(f"/v1/webhooks/{hook['id']}").status_code == 404


def test_bad_subscriptions_name_the_field(stack: Stack) -> None:
    key = stack.new_key("hooks-bad")
    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"})
    for body, field in [
        ({"url": "ftp://x/y", "event_types": ["job.queued"]}, "url"),
        ({"url": "http://x/y", "event_types": ["job.exploded"]}, "event_types"),
        ({"url": "http://x/y", "event_types": []}, "event_types"),
    ]:
        response = http.post("/v1/webhooks", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == field
