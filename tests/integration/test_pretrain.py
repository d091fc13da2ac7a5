"""The whole path on PostgreSQL, Redis, real Celery workers and real torchrun (2 x gloo)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from safetensors.numpy import load_file

from tests.stack import Stack
from trainyard.client import Client

pytestmark = pytest.mark.integration

TINY = {
    "model": {"preset": "tiny"},
    "training": {
        "max_steps": 60,
        "seq_len": 32,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_steps": 5,
        "eval_interval": 20,
        "eval_batches": 4,
        "checkpoint_interval": 30,
    },
    "resources": {"processes_per_node": 2, "accelerator": "cpu"},
}


def trainer_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention the marker (a job id)."""
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("pretrain-tests"))


@pytest.fixture(scope="module")
def dataset(client: Client, corpus_file: Path) -> dict[str, object]:
    ds = client.upload_dataset(corpus_file, name="corpus")
    return client.wait_dataset(str(ds["id"]))


def test_upload_records_hash_format_and_records(
    dataset: dict[str, object], corpus_file: Path
) -> None:
    import hashlib

    assert dataset["status"] == "ready"
    assert dataset["format"] == "text" and dataset["kind"] == "pretrain"
    assert dataset["sha256"] == hashlib.sha256(corpus_file.read_bytes()).hexdigest()
    assert dataset["bytes"] == corpus_file.stat().st_size
    assert dataset["records"] == len(corpus_file.read_text().splitlines())


def test_pretrain_job_end_to_end(
    stack: Stack, client: Client, dataset: dict[str, object], tmp_path: Path
) -> None:
    job = client.create_job({"dataset_id": dataset["id"], "name": "e2e", **TINY})
    assert job["status"] == "queued"
    # The stored spec is resolved: defaults filled in, micro batch derived from the world size.
    assert job["spec"]["training"]["micro_batch_size"] == 4
    assert job["spec"]["tokenizer"] == {"type": "byte", "vocab_size": 257, "tokenizer_id": None}
    assert job["spec"]["model"]["arch"] == "gpt2"

    done = client.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.log("node")[-3000:])
    assert done["progress"]["step"] == 60
    assert done["params"] and done["flops_per_token"]
    assert done["model_id"]

    series = client.metrics(job["id"])
    losses = [p["value"] for p in series["loss"]]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5  # it learned something
    assert [p["step"] for p in series["val_loss"]] == [20, 40, 60]

    checkpoints = client.checkpoints(job["id"])
    assert [c["step"] for c in checkpoints] == [30, 60]

    statuses = [
        e["data"]["status"]
        for e in client.events(job["id"], limit=1000)["data"]
        if e["type"] == "status"
    ]
    assert statuses == ["queued", "preparing", "running", "succeeded"]

    model = client.model(done["model_id"])
    names = {f["name"] for f in model["files"]}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    weights = load_file(
        client.download(model["id"], "model.safetensors", tmp_path / "model.safetensors")
    )
    assert weights["transformer.wte.weight"].shape == (257, 64)
    config = json.loads(
        client.download(model["id"], "config.json", tmp_path / "config.json").read_text()
    )
    assert config["n_layer"] == 2 and config["vocab_size"] == 257

    text = client.generate(model["id"], "the king", max_new_tokens=20, temperature=0.0)
    assert isinstance(text, str) and len(text.encode()) >= 1
    assert not trainer_processes(job["id"])


def test_second_job_reuses_token_shards(
    stack: Stack, client: Client, dataset: dict[str, object]
) -> None:
    shards = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "datasets" / str(dataset["id"]) / "tokens"
    before = {p: p.stat().st_mtime_ns for p in shards.rglob("*.bin")}
    assert before, "the first job should have written token shards"
    job = client.create_job(
        {"dataset_id": dataset["id"], **TINY, "training": {**TINY["training"], "max_steps": 5}}
    )
    done = client.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded"
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*.bin")} == before


def test_cancel_running_job_leaves_no_process(
    stack: Stack, client: Client, dataset: dict[str, object]
) -> None:
    spec = {
        "dataset_id": dataset["id"],
        **TINY,
        "training": {
            **TINY["training"],
            "max_steps": 100000,
            "eval_interval": 1000,
            "checkpoint_interval": 100000,
        },
    }
    job = client.create_job(spec)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.job(job["id"])
        if state["status"] == "running" and state["progress"]["step"] > 0:
            break
        time.sleep(0.3)
    assert state["progress"]["step"] > 0
    assert trainer_processes(job["id"])

    cancelled_at = time.monotonic()
    assert client.cancel_job(job["id"])["status"] == "cancelling"
    final = client.wait_job(job["id"], timeout=60)
    elapsed = time.monotonic() - cancelled_at
    assert final["status"] == "cancelled"
    assert elapsed < 20, f"cancel took {elapsed:.1f}s"
    assert not trainer_processes(job["id"])
    # Cancelling again changes nothing.
    assert client.cancel_job(job["id"])["status"] == "cancelled"


def test_nan_loss_fails_with_code_and_step(client: Client, dataset: dict[str, object]) -> None:
    spec = {
        "dataset_id": dataset["id"],
        **TINY,
        "training": {
            **TINY["training"],
            "lr": 1e30,
            "min_lr": 1e30,
            "grad_clip": 0.0,
            "warmup_steps": 0,
            "max_steps": 200,
        },
    }
    job = client.wait_job(client.create_job(spec)["id"], timeout=300)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "nan_loss"
    assert "step" in job["error"]["message"]


def test_idempotency_key_returns_the_first_job(client: Client, dataset: dict[str, object]) -> None:
    spec = {"dataset_id": dataset["id"], **TINY}
    first = client.create_job(spec, idempotency_key="retry-1")
    again = client.create_job(spec, idempotency_key="retry-1")
    assert again["id"] == first["id"]
    client.cancel_job(first["id"])


def test_events_stream_follows_until_the_end(
    stack: Stack, client: Client, dataset: dict[str, object]
) -> None:
    job = client.create_job(
        {"dataset_id": dataset["id"], **TINY, "training": {**TINY["training"], "max_steps": 5}}
    )
    seen = []
    headers = {"Authorization": client.http.headers["Authorization"], "Accept": "text/event-stream"}
    with httpx.stream(
        "GET", f"{stack.url}/v1/jobs/{job['id']}/events", headers=headers, timeout=300
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                seen.append(line[7:])
    assert seen[0] == "status" and seen[-1] == "end"
    assert "done" in seen


def test_pretraining_validates_on_a_dataset_of_its_own(
    client: Client, dataset: dict[str, object], tmp_path: Path
) -> None:
    from tests.conftest import corpus

    held_out = tmp_path / "held-out.txt"
    held_out.write_text(corpus(lines=200, seed=7))
    val = client.wait_dataset(str(client.upload_dataset(held_out, name="held-out")["id"]))
    training = {**TINY["training"], "max_steps": 6, "eval_interval": 3, "checkpoint_interval": 6}
    job = client.create_job(
        {
            "dataset_id": dataset["id"],
            "validation": {"dataset_id": val["id"]},
            **TINY,
            "training": training,
            "resources": {"processes_per_node": 1, "accelerator": "cpu"},
        }
    )
    done = client.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert [p["step"] for p in client.metrics(job["id"])["val_loss"]] == [3, 6]
    assert done["progress"]["val_loss"] is not None


def test_mixture_of_experts_job_reports_router_metrics(
    stack: Stack, client: Client, dataset: dict[str, object]
) -> None:
    spec = {
        "dataset_id": dataset["id"],
        "model": {"preset": "tiny-llama", "moe": {"num_experts": 4, "every_k_layers": 2}},
        "training": {**TINY["training"], "max_steps": 6, "eval_interval": 6},
        "resources": {"processes_per_node": 1, "accelerator": "cpu"},
    }
    job = client.create_job(spec)
    assert job["spec"]["model"]["moe"]["top_k"] == 2  # defaults filled in
    done = client.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.log("node")[-3000:])
    series = client.metrics(job["id"])
    assert [p["step"] for p in series["aux_loss"]] == list(range(1, 7))
    # Layer 1 alone has experts (every second layer); each step's shares add up to one.
    loads = {name: points for name, points in series.items() if name.startswith("expert_load.")}
    assert sorted(loads) == [f"expert_load.1.{e}" for e in range(4)]
    for step in range(6):
        assert sum(points[step]["value"] for points in loads.values()) == pytest.approx(1.0)
    model = client.model(done["model_id"])
    assert model["config"]["architectures"] == ["MixtralForCausalLM"]
