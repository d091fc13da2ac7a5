"""The SDK's HTTP behaviour over a real socket: retries and Retry-After, idempotency keys,
errors as exceptions, SSE resume after a dropped connection, upload progress.

The server here is a scripted HTTP server on loopback that answers what each test needs
(a 429, a dropped stream), which the real API cannot be made to do on demand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trainyard.client import Client, TrainyardError

JOB = {
    "id": "job_1",
    "type": "pretrain",
    "status": "queued",
    "dataset_id": "ds_1",
    "spec": {},
    "progress": {"step": 0, "max_steps": 10, "tokens": 0},
    "created_at": "2026-01-01T00:00:00Z",
}
DATASET = {
    "id": "ds_1",
    "name": "corpus.txt",
    "format": "text",
    "kind": "pretrain",
    "status": "validating",
    "bytes": 0,
    "sha256": "0" * 64,
    "created_at": "2026-01-01T00:00:00Z",
}
Reply = Callable[[BaseHTTPRequestHandler], None]


def send(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        raw = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    return reply


class Script:
    """Replies given in order; every request seen (method, path, headers, body length)."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.seen: list[dict[str, Any]] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            script.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "bytes": len(body),
                }
            )
            script.replies.pop(0)(self)

        do_GET = do_POST = do_DELETE = handle_one

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


def test_429_waits_for_retry_after_and_keeps_the_idempotency_key(
    server: tuple[str, Script],
) -> None:
    url, script = server
    busy = {"error": {"code": "rate_limited", "message": "slow down", "details": None}}
    script.replies = [send(429, busy, {"Retry-After": "1"}), send(201, JOB)]
    started = time.monotonic()
    with Client(url, "key", backoff=0.01) as client:
        job = client.jobs.create({"dataset_id": "ds_1"})
    assert time.monotonic() - started >= 0.95  # Retry-After, not the 10 ms backoff
    assert job.id == "job_1" and job.progress.max_steps == 10
    keys = [s["headers"]["Idempotency-Key"] for s in script.seen]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("sdk-")


def test_a_quota_refusal_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    over = {
        "error": {
            "code": "quota_exceeded",
            "message": "the project has 2 queued jobs, its quota max_queued_jobs is 2",
            "details": {"quota": "max_queued_jobs", "limit": 2, "used": 2},
        }
    }
    script.replies = [send(429, over), send(201, JOB)]
    with Client(url, "key", backoff=0.01) as client, pytest.raises(TrainyardError) as refused:
        client.jobs.create({"dataset_id": "ds_1"})
    assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
    assert refused.value.details["quota"] == "max_queued_jobs"
    assert len(script.seen) == 1


def test_each_create_gets_its_own_key(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [send(201, JOB), send(201, JOB)]
    with Client(url, "key") as client:
        client.jobs.create({})
        client.jobs.create({})
    assert (
        script.seen[0]["headers"]["Idempotency-Key"] != script.seen[1]["headers"]["Idempotency-Key"]
    )


def test_an_api_error_is_an_exception_with_code_message_details(server: tuple[str, Script]) -> None:
    url, script = server
    details = [{"field": "training.max_steps", "message": "must be > 0"}]
    script.replies = [
        send(422, {"error": {"code": "invalid_request", "message": "bad", "details": details}})
    ]
    with Client(url, "key") as client, pytest.raises(TrainyardError) as caught:
        client.jobs.create({"training": {"max_steps": 0}})
    err = caught.value
    assert (err.status, err.code, err.message, err.details) == (
        422,
        "invalid_request",
        "bad",
        details,
    )
    assert len(script.seen) == 1  # a 4xx other than 429 is never retried


def test_5xx_retries_a_get_but_not_an_upload(server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    down = {"error": {"code": "internal_error", "message": "boom", "details": None}}
    script.replies = [send(503, down), send(502, down), send(200, JOB)]
    with Client(url, "key", backoff=0.01) as client:
        assert client.jobs.get("job_1").status == "queued"
        assert len(script.seen) == 3
        script.replies = [send(500, down), send(201, DATASET)]
        path = tmp_path / "corpus.txt"
        path.write_text("hello\n")
        with pytest.raises(TrainyardError) as caught:
            client.datasets.upload(path, wait=False)
    assert caught.value.code == "internal_error"
    assert len(script.seen) == 4  # the upload was sent once: it may have been stored


def test_gives_up_after_max_retries(server: tuple[str, Script]) -> None:
    url, script = server
    down = {"error": {"code": "unavailable", "message": "down", "details": None}}
    script.replies = [send(503, down) for _ in range(3)]
    with (
        Client(url, "key", max_retries=2, backoff=0.01) as client,
        pytest.raises(TrainyardError) as caught,
    ):
        client.jobs.list()
    assert caught.value.status == 503 and len(script.seen) == 3


def test_upload_reports_progress_to_the_last_byte(
    server: tuple[str, Script], tmp_path: Path
) -> None:
    url, script = server
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"the king sails north\n" * 50_000)  # 1 MB, many reads
    script.replies = [
        send(201, DATASET),
        send(200, {**DATASET, "status": "ready", "records": 50_000}),
    ]
    calls: list[tuple[int, int]] = []
    with Client(url, "key") as client:
        ds = client.datasets.upload(
            path, on_progress=lambda sent, total: calls.append((sent, total))
        )
    size = path.stat().st_size
    assert ds.status == "ready" and ds.records == 50_000
    assert len(calls) > 2 and calls[-1] == (size, size)
    assert [s for s, _ in calls] == sorted(s for s, _ in calls)
    assert script.seen[0]["bytes"] > size  # the file went whole, inside the multipart body


def sse_frames(ids: list[int]) -> bytes:
    out = b""
    for i in ids:
        event = {
            "id": i,
            "type": "log",
            "message": f"event {i}",
            "data": {},
            "created_at": "2026-01-01T00:00:00Z",
        }
        out += f"id: {i}\nevent: log\ndata: {json.dumps(event)}\n\n".encode()
    return out


def stream(ids: list[int], end: bool) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        body = sse_frames(ids) + (b'event: end\ndata: {"status": "succeeded"}\n\n' if end else b"")
        h.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
        if end:
            h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
        h.close_connection = True  # without the last chunk: a dropped connection

    return reply


def test_stream_resumes_from_the_last_event_id(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [stream([1, 2], end=False), stream([3], end=True)]
    with Client(url, "key", backoff=0.01) as client:
        events = list(client.jobs.stream("job_1"))
    assert [e.id for e in events] == [1, 2, 3]
    assert [s["headers"]["Last-Event-ID"] for s in script.seen] == ["0", "2"]


def chat_chunks(deltas: list[str], error: dict[str, Any] | None = None) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        chunks += [{"choices": [{"index": 0, "delta": {"content": d}}]} for d in deltas]
        frames = [json.dumps(c) for c in chunks] + ([json.dumps({"error": error})] if error else [])
        body = "".join(f"data: {f}\n\n" for f in [*frames, "[DONE]"]).encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return reply


def test_chat_stream_waits_out_a_busy_model_then_yields_each_piece(
    server: tuple[str, Script],
) -> None:
    url, script = server
    busy = {"error": {"code": "model_busy", "message": "busy", "details": None}}
    script.replies = [send(429, busy, {"Retry-After": "0"}), chat_chunks(["ol", "d s", "ea"])]
    ask = [{"role": "user", "content": "hi"}]
    with Client(url, "key", backoff=0.01) as client:
        assert list(client.models.chat_stream("ft:m", ask, max_tokens=3)) == ["ol", "d s", "ea"]
        failed = {"message": "sampling failed", "type": "x", "param": None, "code": "model_error"}
        script.replies = [chat_chunks(["ol"], error=failed)]
        pieces = []
        with pytest.raises(TrainyardError) as caught:
            pieces.extend(client.models.chat_stream("ft:m", ask))
    assert pieces == ["ol"] and caught.value.code == "model_error"
    assert [s["path"] for s in script.seen] == ["/v1/chat/completions"] * 3
