"""Fine-tuning on the real stack: chat datasets, SFT jobs (full and LoRA), chat generation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.stack import Stack
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

BASE = {
    "model": {"preset": "tiny"},
    "training": {
        "max_steps": 20,
        "seq_len": 64,
        "batch_size": 8,
        "warmup_steps": 2,
        "eval_interval": 20,
        "eval_batches": 2,
    },
    "resources": {"processes_per_node": 1, "accelerator": "cpu"},
}


def reverse_task(n: int, seed: int) -> list[dict[str, object]]:
    """Chat examples: reverse a short word."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(n)]
    return [
        {
            "messages": [
                {"role": "system", "content": "Reverse the word."},
                {"role": "user", "content": w},
                {"role": "assistant", "content": w[::-1]},
            ]
        }
        for w in words
    ]


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("sft"))


@pytest.fixture(scope="module")
def base_model(client: Client, corpus_file: Path) -> dict[str, object]:
    ds = client.wait_dataset(str(client.upload_dataset(corpus_file)["id"]))
    job = client.wait_job(client.create_job({"dataset_id": ds["id"], **BASE})["id"], timeout=300)
    assert job["status"] == "succeeded", job
    return client.model(job["model_id"])


@pytest.fixture(scope="module")
def sft_dataset(client: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    path = tmp_path_factory.mktemp("sft") / "reverse.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in reverse_task(200, 1)) + "\n")
    ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
    assert ds["status"] == "ready" and ds["kind"] == "sft" and ds["records"] == 200
    return ds


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_job_end_to_end(
    client: Client,
    base_model: dict[str, object],
    sft_dataset: dict[str, object],
    method: str,
    tmp_path: Path,
) -> None:
    spec = {
        "type": "sft",
        "dataset_id": sft_dataset["id"],
        "model": {"base_model_id": base_model["id"]},
        "sft": {"method": method, "eval_prompts": 2},
        "training": {"max_steps": 30, "batch_size": 8, "eval_interval": 15, "eval_batches": 2},
        "resources": {"processes_per_node": 2, "accelerator": "cpu"},
    }
    job = client.create_job(spec)
    resolved = job["spec"]
    assert resolved["model"]["arch"] == "gpt2" and resolved["model"]["n_layer"] == 2
    assert resolved["training"]["seq_len"] == 64  # the base model's context
    assert resolved["tokenizer"]["type"] == "model"
    assert resolved["training"]["lr"] == (1e-3 if method == "lora" else 1e-4)
    if method == "lora":
        assert resolved["sft"]["lora"]["rank"] == 8

    done = client.wait_job(job["id"], timeout=400)
    assert done["status"] == "succeeded", done
    losses = [p["value"] for p in client.metrics(job["id"])["loss"]]
    assert len(losses) == 30 and min(losses[-5:]) < losses[0]
    events = client.events(job["id"], limit=1000)["data"]
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 2
    assert samples[0]["data"]["messages"][-1]["role"] == "user"
    prepared = next(e for e in events if e["type"] == "prepared")
    assert prepared["data"]["train"]["examples"] > 150

    model = client.model(done["model_id"])
    config = client.download(model["id"], "tokenizer_config.json", tmp_path / "tc.json")
    assert "chat_template" in json.loads(config.read_text())
    reply = client.request(
        "POST",
        f"/v1/models/{model['id']}/generate",
        json={
            "messages": [{"role": "user", "content": "abc"}],
            "max_new_tokens": 8,
            "temperature": 0.0,
        },
    )
    assert isinstance(reply["text"], str) and "<|im_end|>" not in reply["text"]


def test_chat_generation_on_a_plain_model_is_422(
    client: Client, base_model: dict[str, object]
) -> None:
    with pytest.raises(TrainyardError) as err:
        client.request(
            "POST",
            f"/v1/models/{base_model['id']}/generate",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    assert err.value.status == 422 and err.value.code == "not_a_chat_model"


def test_bad_sft_lines_are_named_by_number(client: Client, tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in reverse_task(8, 2)]
    lines[2] = json.dumps({"messages": [{"content": "no role"}]})
    lines[4] = json.dumps(
        {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "x"}]}
    )
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
    assert ds["status"] == "invalid"
    by_line = {e["line"]: e["message"] for e in ds["errors"]}
    assert set(by_line) == {3, 5, 7}
    assert "role" in by_line[3]
    assert "empty content" in by_line[5]
    assert "no assistant turn" in by_line[7]


def test_sft_spec_errors(
    client: Client, base_model: dict[str, object], sft_dataset: dict[str, object], corpus_file: Path
) -> None:
    with pytest.raises(TrainyardError) as err:  # no base model
        client.create_job({"type": "sft", "dataset_id": sft_dataset["id"]})
    assert err.value.status == 422 and "base_model_id" in err.value.message
    with pytest.raises(TrainyardError) as err:  # a text dataset for fine-tuning
        text = client.wait_dataset(str(client.upload_dataset(corpus_file)["id"]))
        client.create_job(
            {"type": "sft", "dataset_id": text["id"], "model": {"base_model_id": base_model["id"]}}
        )
    assert err.value.status == 409 and err.value.code == "dataset_kind"
    with pytest.raises(TrainyardError) as err:  # longer than gpt2's learned positions
        client.create_job(
            {
                "type": "sft",
                "dataset_id": sft_dataset["id"],
                "model": {"base_model_id": base_model["id"]},
                "training": {"seq_len": 128},
            }
        )
    assert err.value.status == 422 and "training.seq_len" in err.value.message
    with pytest.raises(TrainyardError) as err:  # tensor parallelism of a gpt2 base model
        client.create_job(
            {
                "type": "sft",
                "dataset_id": sft_dataset["id"],
                "model": {"base_model_id": base_model["id"]},
                "resources": {"strategy": "tp", "processes_per_node": 2},
            }
        )
    assert err.value.status == 422 and err.value.message.startswith("model.arch 'gpt2'")
    assert [d["field"] for d in err.value.details] == ["model.arch"]
    assert str(base_model["id"]) in err.value.message
    with pytest.raises(TrainyardError) as err:  # a model that is not ours
        client.create_job(
            {
                "type": "sft",
                "dataset_id": sft_dataset["id"],
                "model": {"base_model_id": "mdl_someoneelses"},
            }
        )
    assert err.value.status == 404
