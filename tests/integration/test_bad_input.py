"""Every bad input a user can send: a clear 4xx or an `invalid` status, nothing half-stored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import UPLOAD_CAP
from tests.stack import Stack
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("bad-input"))


def stored(stack: Stack) -> tuple[set[str], list[Path]]:
    """Dataset folders and leftover temporary uploads in storage."""
    root = Path(stack.env["TRAINYARD_STORAGE_ROOT"])
    datasets = {p.name for p in (root / "datasets").glob("*")}
    return datasets, list((root / "tmp").glob("*"))


def test_missing_or_wrong_key_is_401(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/v1/jobs").status_code == 401
    r = httpx.get(f"{stack.url}/v1/jobs", headers={"Authorization": "Bearer ty_nope"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"


def test_empty_file_is_rejected_and_nothing_stored(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    before = stored(stack)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(TrainyardError) as err:
        client.upload_dataset(empty)
    assert err.value.status == 400 and err.value.code == "empty_file"
    assert stored(stack) == before


def test_upload_over_the_cap_is_413_and_leaves_nothing(
    stack: Stack, client: Client, tmp_path: Path
) -> None:
    before = stored(stack)
    listed = client.request("GET", "/v1/datasets", params={"limit": 100})["data"]
    big = tmp_path / "big.txt"
    big.write_bytes(b"abcdefgh\n" * (UPLOAD_CAP // 9 + 1000))

    def chunks():  # no Content-Length: the cap must hold while streaming
        boundary = b"cap-test"
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        yield b'filename="big.txt"\r\n\r\n'
        with big.open("rb") as f:
            while chunk := f.read(65536):
                yield chunk
        yield b"\r\n--" + boundary + b"--\r\n"

    headers = {**client.http.headers, "Content-Type": "multipart/form-data; boundary=cap-test"}
    try:
        r = httpx.post(f"{stack.url}/v1/datasets", content=chunks(), headers=headers, timeout=60)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "upload_too_large"
    except httpx.HTTPError:
        pass  # the server may close the connection while we are still sending
    assert stored(stack) == before
    assert client.request("GET", "/v1/datasets", params={"limit": 100})["data"] == listed

    with pytest.raises(TrainyardError) as err:  # with Content-Length, refused up front
        client.upload_dataset(big)
    assert err.value.status == 413
    assert stored(stack) == before


def test_non_utf8_text_is_invalid_with_the_line(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"good line\nanother good line\ncaf\xe9 au lait\n")
    ds = client.wait_dataset(client.upload_dataset(path)["id"])
    assert ds["status"] == "invalid"
    assert ds["errors"][0]["line"] == 3
    assert "UTF-8" in ds["errors"][0]["message"]


def test_broken_json_line_7_is_named(client: Client, tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"record {i}"}) for i in range(1, 11)]
    lines[6] = '{"text": "broken" oops}'
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ds = client.upload_dataset(path)
    assert ds["format"] == "jsonl"
    ds = client.wait_dataset(ds["id"])
    assert ds["status"] == "invalid"
    assert [e["line"] for e in ds["errors"]] == [7]
    assert "invalid JSON" in ds["errors"][0]["message"]


def test_jsonl_without_text_field_is_named(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    ds = client.wait_dataset(client.upload_dataset(path)["id"])
    assert ds["status"] == "invalid"
    assert ds["errors"] == [{"line": 2, "message": 'missing string field "text"'}]


def test_job_on_invalid_dataset_is_409_naming_it(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n')
    ds = client.wait_dataset(client.upload_dataset(path)["id"])
    with pytest.raises(TrainyardError) as err:
        client.create_job({"dataset_id": ds["id"]})
    assert err.value.status == 409 and err.value.code == "dataset_invalid"
    assert ds["id"] in err.value.message and "line 2" in err.value.message
    assert client.request("GET", "/v1/jobs", params={"limit": 100})["data"] == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"training": {"lr": 0.1, "epochs": 3}}, "training.epochs"),
        ({"training": {"batch_size": 10, "micro_batch_size": 4}}, "training.batch_size"),
        ({"training": {"warmup_steps": 50, "max_steps": 10}}, "training.warmup_steps"),
        ({"model": {"preset": "gpt9"}}, "model"),
        ({"model": {"n_layer": 2, "n_head": 3, "d_model": 64}}, "model"),
        ({"tokenizer": {"type": "bpe", "vocab_size": 10}}, "tokenizer.vocab_size"),
        ({"resources": {"processes_per_node": 0}}, "resources.processes_per_node"),
        (
            {"model": {"preset": "tiny"}, "resources": {"strategy": "tp", "processes_per_node": 2}},
            "model.arch 'gpt2' has no tensor-parallel plan",
        ),
        (
            {
                "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 64},
                "resources": {"strategy": "fsdp+tp", "processes_per_node": 4},
            },
            "model.n_head (2) must be divisible by resources.tensor_parallel_size (4)",
        ),
        (
            {"resources": {"strategy": "tp", "processes_per_node": 2, "tensor_parallel_size": 4}},
            "resources: resources.tensor_parallel_size (4) must divide the number of processes",
        ),
    ],
)
def test_bad_job_spec_is_422_naming_the_field(
    client: Client, spec: dict[str, object], field: str
) -> None:
    with pytest.raises(TrainyardError) as err:
        client.create_job({"dataset_id": "ds_whatever", **spec})
    assert err.value.status == 422
    assert err.value.code == "invalid_request"
    assert err.value.message.startswith(field)


def test_unknown_dataset_is_404(client: Client) -> None:
    with pytest.raises(TrainyardError) as err:
        client.create_job({"dataset_id": "ds_doesnotexist"})
    assert err.value.status == 404


def test_a_model_too_big_for_the_gpus_is_refused_with_the_numbers(
    client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "small.txt"
    path.write_text("some text to train on\n" * 50)
    ds = client.wait_dataset(client.upload_dataset(path)["id"])
    huge = {
        "dataset_id": ds["id"],
        "model": {"preset": "llama-1b"},
        "training": {"seq_len": 8192, "batch_size": 64, "micro_batch_size": 64},
        "resources": {"accelerator": "gpu"},
    }
    with pytest.raises(TrainyardError) as err:
        client.create_job(huge)
    assert err.value.status == 422 and err.value.code == "insufficient_memory"
    numbers = err.value.details
    assert numbers["estimate_bytes"]["total"] > numbers["device_memory_bytes"]
    assert numbers["estimate_bytes"]["parameters"] > 2 * 10**9  # 700M+ fp32 parameters
    # The same model fits once the micro-batch is small and activations are recomputed.
    fitting = {
        **huge,
        "training": {
            "seq_len": 2048,
            "batch_size": 64,
            "micro_batch_size": 1,
            "activation_checkpointing": True,
        },
    }
    job = client.create_job(fitting)
    assert job["spec"]["training"]["activation_checkpointing"] is True
    client.cancel_job(job["id"])


def test_a_model_too_big_for_a_cpu_nodes_ram_is_refused_with_the_numbers(
    client: Client, tmp_path: Path
) -> None:
    path = tmp_path / "small.txt"
    path.write_text("some text to train on\n" * 50)
    ds = client.wait_dataset(client.upload_dataset(path)["id"])
    # About 155 thousand million parameters: more RAM than any host has, on 2 processes.
    huge = {
        "dataset_id": ds["id"],
        "model": {"arch": "gpt2", "n_layer": 48, "n_head": 64, "d_model": 16384},
        "training": {"seq_len": 64, "batch_size": 2},
        "resources": {"accelerator": "cpu", "processes_per_node": 2},
    }
    with pytest.raises(TrainyardError) as err:
        client.create_job(huge)
    assert err.value.status == 422 and err.value.code == "insufficient_memory"
    assert "RAM" in err.value.message and "processes_per_node" in err.value.message
    numbers = err.value.details
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # the stack's node is here
    assert numbers["node_memory_bytes"] == ram
    assert numbers["needed_bytes"] > ram
    assert numbers["needed_bytes"] > 2 * numbers["estimate_bytes"]["total"]  # both processes
    # Precision auto is sized for bf16 here (its weight copies outweigh fp32's activations),
    # so fp32 is offered; a job that names fp32 is not offered it again.
    assert numbers["estimate_bytes"]["working_weights"] > 0
    assert "training.precision 'fp32'" in err.value.message
    in_fp32 = {**huge, "training": {**huge["training"], "precision": "fp32"}}
    with pytest.raises(TrainyardError) as err:
        client.create_job(in_fp32)
    assert err.value.code == "insufficient_memory" and "precision" not in err.value.message
    assert err.value.details["estimate_bytes"]["working_weights"] == 0
    # A small model on the same node is queued.
    small = {**huge, "model": {"preset": "tiny"}, "training": {"max_steps": 1}}
    client.cancel_job(client.create_job(small)["id"])
