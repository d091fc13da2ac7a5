"""What one client must not be able to do to a shared service: each request is sent as an
outside client would, and the answer and what it left behind are checked."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from api import limits
from tests.conftest import MAX_LINE, corpus
from tests.stack import REDIS_URL, Database, Stack, ThrowawayRedis, free_port
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

JOB = {
    "model": {"preset": "tiny"},
    "training": {"max_steps": 2, "seq_len": 16, "batch_size": 2, "eval_interval": 2},
    "resources": {"accelerator": "cpu"},
}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("limits"))


@pytest.fixture(scope="module")
def dataset_id(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("limits") / "corpus.txt"
    path.write_text(corpus(lines=300))
    ds = client.upload_dataset(path)
    assert client.wait_dataset(ds["id"], timeout=120)["status"] == "ready"
    return str(ds["id"])


@pytest.fixture(scope="module")
def tight(
    stack: Stack, postgres_db: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A second API process on the same database with small budgets (no workers)."""
    extra = {
        "TRAINYARD_READ_RATE": "1/s:3",
        "TRAINYARD_EVENT_STREAMS_PER_PROJECT": "1",
        "TRAINYARD_MODEL_WORKERS": "1",
        "TRAINYARD_MODEL_QUEUE": "1",
        "TRAINYARD_MODEL_CALLS_PER_PROJECT": "1",
    }
    with Stack(tmp_path_factory.mktemp("tight"), postgres_db.url, extra_env=extra) as s:
        s.env["TRAINYARD_STORAGE_ROOT"] = stack.env["TRAINYARD_STORAGE_ROOT"]
        s.start("api", "api", "--port", str(s.port))
        s.wait_ready(node=False)
        yield s


def leftovers(stack: Stack) -> list[Path]:
    return list((Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "tmp").glob("*"))


def raw_request(stack: Stack, head: bytes, body_part: bytes) -> bytes:
    """Send a request's head and the start of a body that never ends; the answer."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(head + body_part)
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            answer += chunk
        return answer


def test_no_key_is_401_before_the_body_is_read(stack: Stack) -> None:
    # 30 MB announced, 1 KiB sent: an answer now means the body was never waited for.
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 30000000\r\n\r\n"
    )
    answer = raw_request(stack, head, b"{" + b" " * 1023)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"unauthorized"' in answer


def test_a_json_body_over_the_limit_is_413_with_or_without_length(
    stack: Stack, client: Client
) -> None:
    key = client.http.headers["Authorization"]
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n"
    ).encode()
    answer = raw_request(stack, head, b"{" + b" " * 1023)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"body_too_large"' in answer

    def chunks() -> Iterator[bytes]:  # chunked: no length to refuse up front
        yield b'{"name": "'
        for _ in range(40):
            yield b"x" * 65536

    try:
        r = client.http.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    except httpx.HTTPError:
        pass  # the server may close while we still send; the 413 above is the contract


def test_many_small_form_fields_are_413_and_leave_nothing(stack: Stack, client: Client) -> None:
    before = leftovers(stack)

    def form() -> Iterator[bytes]:  # chunked, fields only: every part counts
        for n in range(2000):
            yield (
                b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n' % n + b"v" * 4000
            ) + b"\r\n"
        yield b"--b--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    try:
        r = client.http.post("/v1/datasets", content=form(), headers=headers, timeout=60)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_parts"
    except httpx.HTTPError:
        pass
    assert leftovers(stack) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"training": {"lr": float("inf")}}, "training.lr"),
        ({"training": {"weight_decay": float("nan")}}, "training.weight_decay"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": "n" * 201}, "name"),
    ],
)
def test_non_numbers_and_control_characters_are_422(
    client: Client, dataset_id: str, change: dict[str, Any], field: str
) -> None:
    spec = {**JOB, "dataset_id": dataset_id, **change}
    if "training" in change:
        spec["training"] = {**JOB["training"], **change["training"]}
    # json.dumps writes Infinity and NaN literals, as a careless client would.
    r = client.http.post(
        "/v1/jobs", content=json.dumps(spec), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/jobs?after=job_%00x", 422),
        ("/v1/jobs/job_%00x", 404),
        ("/v1/jobs/{job}/metrics?after_step=99999999999999999999999", 422),
        # Past a 32-bit step (the column's type), not only past a 64-bit integer.
        ("/v1/jobs/{job}/metrics?after_step=9223372036854775807", 422),
        ("/v1/jobs/{job}/events?metrics_after_step=2147483648", 422),
        ("/v1/jobs/{job}/events?after=-1", 422),
        ("/v1/datasets?after=" + "a" * 65, 422),
        ("/v1/webhooks?after=wh_%00x", 422),
        ("/v1/webhooks/wh_%00x/deliveries", 404),
        ("/v1/webhooks/wh_x/deliveries?after=%00", 422),
        # The OpenAI-compatible routes answer a bad request as 400, in OpenAI's shape.
        ("/v1/files?after=ds_%00x", 400),
        ("/v1/fine_tuning/jobs?after=job_%00x", 400),
        ("/v1/fine_tuning/jobs/{job}/checkpoints?after=%00", 400),
        ("/v1/files/ds_%00x", 404),
        ("/v1/files/ds_%00x/content", 404),
        ("/v1/fine_tuning/jobs/job_%00x", 404),
        ("/v1/fine_tuning/jobs/job_%00x/events", 404),
        ("/v1/models/m%00x", 404),
        ("/v1/webhooks/wh_%00x", 404),
    ],
)
def test_cursors_and_ids_that_no_row_can_have(
    client: Client, dataset_id: str, path: str, status: int
) -> None:
    job = client.create_job({**JOB, "dataset_id": dataset_id})
    r = client.http.get(path.format(job=job["id"]))
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}


def test_default_warmup_follows_a_short_run(client: Client, dataset_id: str) -> None:
    job = client.create_job({"dataset_id": dataset_id, "training": {"max_steps": 60}})
    assert job["spec"]["training"]["warmup_steps"] == 60
    with pytest.raises(TrainyardError) as err:  # a value the user gave still conflicts
        client.create_job(
            {"dataset_id": dataset_id, "training": {"max_steps": 60, "warmup_steps": 61}}
        )
    assert err.value.status == 422
    client.cancel_job(job["id"])


def test_an_idempotency_key_with_another_body_is_refused(client: Client, dataset_id: str) -> None:
    spec = {**JOB, "dataset_id": dataset_id}
    headers = {"Idempotency-Key": f"k-{time.time_ns()}"}
    answers: list[httpx.Response] = []

    def create() -> None:
        answers.append(client.http.post("/v1/jobs", json=spec, headers=headers))

    threads = [threading.Thread(target=create) for _ in range(4)]  # at once: one wins
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    other = client.http.post("/v1/jobs", json={**spec, "name": "other"}, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    client.cancel_job(answers[0].json()["id"])


def test_a_line_over_the_limit_makes_the_dataset_invalid(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"ok\n" + b"x" * (MAX_LINE + 10))  # no newline at all after line 1
    ds = client.wait_dataset(client.upload_dataset(path)["id"], timeout=120)
    assert ds["status"] == "invalid"
    assert ds["errors"][0]["line"] == 2
    assert str(MAX_LINE) in ds["errors"][0]["message"]


def test_an_import_whose_config_outgrows_its_weights_is_refused_unloaded(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    before = leftovers(stack)
    config = {
        "model_type": "gpt2",
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 65536,  # a few thousand million parameters from a 1 KiB file
        "n_layer": 48,
        "n_head": 64,
    }
    save_file({"wte": np.zeros((4, 4), dtype=np.float32)}, str(tmp_path / "w.safetensors"))
    files = {
        "config": ("config.json", json.dumps(config)),
        "weights": ("model.safetensors", (tmp_path / "w.safetensors").read_bytes()),
        "tokenizer": ("tokenizer.json", "{}"),
    }
    r = client.http.post("/v1/models/import", files=files)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_model", "model_too_large")
    assert "parameters" in r.json()["error"]["message"]
    assert leftovers(stack) == before


def test_internal_endpoints_are_not_on_the_public_port(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.env['TRAINYARD_NODE_SECRET']}"}
    public = httpx.post(f"{stack.url}/internal/nodes/x/heartbeat", headers=headers)
    assert public.status_code == 404
    internal_url = f"http://127.0.0.1:{stack.env['TRAINYARD_INTERNAL_PORT']}"
    assert httpx.post(f"{internal_url}/internal/nodes/x/heartbeat").status_code == 401


def test_reads_past_the_budget_are_429_with_retry_after(tight: Stack) -> None:
    http = httpx.Client(
        base_url=tight.url, headers={"Authorization": f"Bearer {tight.new_key('flood')}"}
    )
    answers = [http.get("/v1/jobs") for _ in range(6)]
    assert answers[0].status_code == 200
    assert answers[0].headers["RateLimit-Limit"] == "3"
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert limited[0].headers["RateLimit-Remaining"] == "0"
    assert limited[0].json()["error"]["code"] == "rate_limited"
    time.sleep(int(limited[0].headers["Retry-After"]))
    assert http.get("/v1/jobs").status_code == 200  # the bucket refills


def test_event_streams_per_project_are_capped(
    tight: Stack, client: Client, dataset_id: str
) -> None:
    # Long enough to be live while both streams open: a finished job's stream ends.
    training = {**JOB["training"], "max_steps": 100_000}
    job = client.create_job({**JOB, "training": training, "dataset_id": dataset_id, "name": "s"})
    http = httpx.Client(base_url=tight.url, headers=dict(client.http.headers), timeout=10)
    sse = {"Accept": "text/event-stream"}
    with http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=sse) as first:
        assert first.status_code == 200
        time.sleep(1.1)  # a read token back
        second = http.get(f"/v1/jobs/{job['id']}/events", headers=sse)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_streams"
    client.cancel_job(job["id"])


def test_model_calls_per_project_are_capped_and_other_projects_still_get_in(
    tight: Stack, tmp_path: Path
) -> None:
    from tests.integration.test_import import hf_folder

    folder = hf_folder(tmp_path, "gpt2")
    parts = {
        "config": ("config.json", (folder / "config.json").read_bytes()),
        "weights": ("model.safetensors", (folder / "model.safetensors").read_bytes()),
        "tokenizer": ("tokenizer.json", (folder / "tokenizer.json").read_bytes()),
    }
    keys = {"a": tight.new_key("model-calls-a"), "b": tight.new_key("model-calls-b")}
    answers: list[tuple[str, httpx.Response]] = []

    def import_as(project: str) -> None:
        headers = {"Authorization": f"Bearer {keys[project]}"}
        r = httpx.post(f"{tight.url}/v1/models/import", files=parts, headers=headers, timeout=120)
        answers.append((project, r))

    # Each import loads the model once in the single worker (seconds, cold): the two of
    # project a overlap, so one is refused; project b waits its turn in the queue.
    threads = [threading.Thread(target=import_as, args=(p,)) for p in ("a", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a = sorted(r.status_code for p, r in answers if p == "a")
    b = [r for p, r in answers if p == "b"]
    assert a == [201, 429], [r.text for _, r in answers]
    assert b[0].status_code == 201, b[0].text
    refused = next(r for _, r in answers if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_model_calls"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_revoked_key_stops_at_once_in_every_api_process(stack: Stack, tight: Stack) -> None:
    key = stack.new_key("revoked")
    apis = [
        httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {key}"})
        for s in (stack, tight)
    ]
    for http in apis:  # remembered by both processes
        assert [http.get("/v1/datasets").status_code for _ in range(3)] == [200] * 3
    out = stack.cli("keys", "revoke", "--key", key[:10])
    assert "Revoked key key_" in out
    for http in apis:
        r = http.get("/v1/datasets")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert "Revoked" in stack.cli("keys", "revoke", "--key", key)  # again: no change


def test_the_api_refuses_to_start_with_a_placeholder_secret(stack: Stack) -> None:
    env = {**stack.env, "TRAINYARD_NODE_SECRET": "change-me"}
    out = subprocess.run(
        [sys.executable, "-m", "trainyard.cli", "api", "--port", "1"],
        env=env,
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "TRAINYARD_NODE_SECRET still holds a placeholder secret" in out.stderr


# One deployment, several API processes: the budgets and the stream caps are the
# deployment's, kept in Redis, not each process's. Writes get one token per 100 s here, so
# no token comes back while a test spends them (the refill is checked on `tight` above).

WAITING_JOB = {**JOB, "resources": {"accelerator": "gpu"}}  # no GPU node: it stays queued
SLOW_WRITES = "0.01/s:4"


@pytest.fixture(scope="module")
def twins(
    stack: Stack, postgres_db: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, list[str]]]:
    """Two uvicorn servers of one deployment (one database, one Redis, one key prefix) on
    ports of their own, with a small write budget and one event stream per project."""
    extra = {"TRAINYARD_WRITE_RATE": SLOW_WRITES, "TRAINYARD_EVENT_STREAMS_PER_PROJECT": "1"}
    with Stack(tmp_path_factory.mktemp("twins"), postgres_db.url, extra_env=extra) as s:
        s.env["TRAINYARD_STORAGE_ROOT"] = stack.env["TRAINYARD_STORAGE_ROOT"]
        urls = []
        for name, port in (("api", s.port), ("api2", free_port())):
            s.start(name, "api", "--port", str(port))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            s.wait_ready(node=False, url=url)
        yield s, urls


def write(http: httpx.Client) -> httpx.Response:
    """A write that spends a token and changes nothing (its empty spec is refused)."""
    return http.post("/v1/jobs", json={})


def spend_writes(http: httpx.Client, most: int = 20) -> list[httpx.Response]:
    """Write until the first 429 (at most `most` requests); the answers."""
    answers = [write(http)]
    while answers[-1].status_code != 429 and len(answers) < most:
        answers.append(write(http))
    return answers


def test_one_budget_across_api_processes(twins: tuple[Stack, list[str]]) -> None:
    s, (url_a, url_b) = twins
    key = {"Authorization": f"Bearer {s.new_key('shared-budget')}"}
    a, b = (httpx.Client(base_url=u, headers=key, timeout=10) for u in (url_a, url_b))
    first = write(b)
    assert first.status_code == 422 and first.headers["RateLimit-Remaining"] == "3"
    answers = spend_writes(a)
    assert [r.status_code for r in answers] == [422, 422, 422, 429], [r.text for r in answers]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0"]
    # The bucket a emptied is the one b spends from.
    refused = write(b)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["RateLimit-Limit"] == "4"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 100
    assert refused.headers["RateLimit-Policy"] == "4;w=400"
    # Reads have a budget of their own (the default 50/s:200), untouched.
    read = b.get("/v1/jobs")
    assert read.status_code == 200 and read.headers["RateLimit-Limit"] == "200"
    # So has every other key.
    other = {"Authorization": f"Bearer {s.new_key('shared-budget-2')}"}
    assert httpx.post(f"{url_b}/v1/jobs", json={}, headers=other).status_code == 422


def open_stream(url: str, headers: dict[str, str], job_id: str) -> tuple[httpx.Client, Any]:
    """A live event stream of the job, opened; (its client, the response to close)."""
    http = httpx.Client(base_url=url, headers=headers, timeout=10)
    request = http.build_request(
        "GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
    )
    return http, http.send(request, stream=True)


def stream_status(url: str, headers: dict[str, str], job_id: str) -> httpx.Response:
    """Try to open a stream; the answer (a stream that opens is closed again at once)."""
    http, response = open_stream(url, headers, job_id)
    if response.status_code != 200:
        response.read()
    response.close()
    http.close()
    return response


def seconds_until(status: int, answer: Any, within: float) -> float:
    """Seconds until `answer()` gave `status` (failing after `within`)."""
    start = time.monotonic()
    while (got := answer().status_code) != status:
        assert time.monotonic() - start < within, f"still {got} after {within} s"
        time.sleep(0.2)
    return time.monotonic() - start


def test_the_stream_cap_holds_across_api_processes(
    twins: tuple[Stack, list[str]], client: Client, dataset_id: str
) -> None:
    _, (url_a, url_b) = twins
    headers = dict(client.http.headers)
    job = client.create_job({**WAITING_JOB, "dataset_id": dataset_id, "name": "followed"})
    http, first = open_stream(url_a, headers, job["id"])
    assert first.status_code == 200
    refused = stream_status(url_b, headers, job["id"])
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"]["code"] == "too_many_streams"
    first.close()
    http.close()
    # Given back when its client leaves, long before its 30 s lease would run out.
    assert seconds_until(200, lambda: stream_status(url_b, headers, job["id"]), within=10) < 10
    client.cancel_job(job["id"])


def test_a_stream_keeps_its_slot_past_its_lease_and_a_crash_frees_it_when_the_lease_ends(
    twins: tuple[Stack, list[str]], client: Client, dataset_id: str
) -> None:
    s, (url_a, _) = twins
    headers = dict(client.http.headers)
    job = client.create_job({**WAITING_JOB, "dataset_id": dataset_id, "name": "orphaned"})
    port = free_port()
    s.start("doomed", "api", "--port", str(port), env={"TRAINYARD_EVENT_STREAM_LEASE_SECONDS": "3"})
    s.wait_ready(node=False, url=f"http://127.0.0.1:{port}")
    http, held = open_stream(f"http://127.0.0.1:{port}", headers, job["id"])
    assert held.status_code == 200
    time.sleep(4.5)  # past its lease: renewed while the stream lasts
    assert stream_status(url_a, headers, job["id"]).status_code == 429
    s.stop("doomed", signal.SIGKILL)  # no chance to give its slot back
    http.close()
    assert stream_status(url_a, headers, job["id"]).status_code == 429  # still held
    # Free once the dead process's lease has run out.
    seconds_until(200, lambda: stream_status(url_a, headers, job["id"]), within=15)
    client.cancel_job(job["id"])


def test_while_redis_is_away_each_process_counts_alone(
    stack: Stack,
    postgres_db: Database,
    client: Client,
    dataset_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Redis gone: requests are still served and still limited, each process holding the
    key to a budget of its own; Redis back: one budget again."""
    workdir = tmp_path_factory.mktemp("redis-away")
    redis_server = ThrowawayRedis(workdir)
    redis_server.start()
    extra = {"TRAINYARD_WRITE_RATE": "0.01/s:3", "TRAINYARD_EVENT_STREAMS_PER_PROJECT": "1"}
    try:
        with Stack(workdir, postgres_db.url, broker_url=redis_server.url, extra_env=extra) as s:
            s.env["TRAINYARD_STORAGE_ROOT"] = stack.env["TRAINYARD_STORAGE_ROOT"]
            urls = [s.url, f"http://127.0.0.1:{free_port()}"]
            for name, url in zip(("api", "api2"), urls, strict=True):
                s.start(name, "api", "--port", url.rsplit(":", 1)[1])
                s.wait_ready(node=False, url=url)
            key = {"Authorization": f"Bearer {s.new_key('redis-away')}"}
            a, b = (httpx.Client(base_url=u, headers=key, timeout=10) for u in urls)
            assert spend_writes(a)[-1].status_code == 429
            assert write(b).status_code == 429  # one budget

            redis_server.kill()
            started = time.monotonic()
            first = write(b)  # b's own bucket, full
            assert first.status_code == 422, first.text
            assert first.headers["RateLimit-Remaining"] == "2"
            assert time.monotonic() - started < 5  # no long wait for the missing Redis
            answers = spend_writes(a)
            assert [r.status_code for r in answers] == [422, 422, 422, 429]
            assert write(b).headers["RateLimit-Remaining"] == "1"  # not a's budget
            sse = dict(client.http.headers)
            job = client.create_job({**WAITING_JOB, "dataset_id": dataset_id, "name": "away"})
            http, held = open_stream(urls[0], sse, job["id"])
            assert held.status_code == 200
            assert stream_status(urls[0], sse, job["id"]).status_code == 429  # the cap holds
            held.close()
            http.close()
            assert "Redis is not answering" in s.log("api")

            redis_server.start()  # empty: every bucket full
            time.sleep(limits.RETRY_SECONDS + 0.5)
            assert write(b).headers["RateLimit-Remaining"] == "2"  # b's own had 1 left
            assert write(a).headers["RateLimit-Remaining"] == "1"  # a's own was empty
            assert "Redis answers again" in s.log("api")
            client.cancel_job(job["id"])
    finally:
        redis_server.kill()


def test_concurrent_takes_never_spend_a_token_twice() -> None:
    """Forty calls at once over four connection pools on a bucket of ten: exactly ten
    pass, and the bucket is left to expire."""
    import asyncio

    from redis import Redis as SyncRedis

    from api.limits import Buckets, Rate, SharedStore
    from trainyard.settings import Settings

    settings = Settings(broker_url=REDIS_URL, queue_prefix=f"t{secrets.token_hex(4)}.")
    bucket = f"{settings.queue_prefix}trainyard:rate:reads:k"

    async def burst() -> list[bool]:
        stores = [SharedStore() for _ in range(4)]  # four processes' connections
        for store in stores:
            store.configure(settings)
        buckets = [Buckets({"reads": Rate.parse("0.001/s:10")}, st) for st in stores]
        answers = await asyncio.gather(*(buckets[n % 4].take("reads", "k") for n in range(40)))
        for store in stores:
            await store.close()
        return [allowed for allowed, _ in answers]

    plain = SyncRedis.from_url(REDIS_URL)
    try:
        assert sum(asyncio.run(burst())) == 10
        assert 0 < plain.pttl(bucket) <= 10 / 0.001 * 1000 + 1000
    finally:
        plain.delete(bucket)
        plain.close()
