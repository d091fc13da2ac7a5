"""Tokenizers on the real stack: BPE trained on a dataset, and uploaded tokenizer.json files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.stack import Stack
from trainer.tokenizer import train_bpe
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

SMALL = {
    "model": {"preset": "tiny"},
    "training": {
        "max_steps": 10,
        "seq_len": 32,
        "batch_size": 4,
        "warmup_steps": 2,
        "eval_interval": 10,
        "eval_batches": 2,
    },
    "resources": {"processes_per_node": 1, "accelerator": "cpu"},
}


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("tokenizers"))


@pytest.fixture(scope="module")
def dataset(client: Client, corpus_file: Path) -> dict[str, object]:
    return client.wait_dataset(str(client.upload_dataset(corpus_file)["id"]))


def upload_tokenizer(client: Client, path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        return dict(
            client.request(
                "POST", "/v1/tokenizers", files={"file": ("tokenizer.json", f, "application/json")}
            )
        )


def test_bpe_job_trains_a_tokenizer_once_and_writes_uint16_shards(
    stack: Stack, client: Client, dataset: dict[str, object]
) -> None:
    spec = {"dataset_id": dataset["id"], "tokenizer": {"type": "bpe", "vocab_size": 512}, **SMALL}
    first = client.wait_job(client.create_job(spec)["id"], timeout=300)
    assert first["status"] == "succeeded", first
    assert first["spec"]["tokenizer"] == {"type": "bpe", "vocab_size": 512, "tokenizer_id": None}
    listed = client.request("GET", "/v1/tokenizers")["data"]
    assert [(t["kind"], t["vocab_size"], t["source_dataset_id"]) for t in listed] == [
        ("bpe", 512, dataset["id"])
    ]
    tok_dir = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "datasets" / str(dataset["id"])
    index = json.loads(next((tok_dir / "tokens").glob("tok_*/index.json")).read_text())
    assert index["dtype"] == "uint16"
    shard = next((tok_dir / "tokens").glob("tok_*/shard-*.bin"))
    assert int(np.fromfile(shard, dtype=np.uint16).max()) < 512

    second = client.wait_job(client.create_job(spec)["id"], timeout=300)
    assert second["status"] == "succeeded"
    assert len(client.request("GET", "/v1/tokenizers")["data"]) == 1
    model = client.model(second["model_id"])
    assert model["config"]["vocab_size"] == 512


def test_uploaded_tokenizer_is_usable_by_a_job(
    client: Client, dataset: dict[str, object], corpus_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "tokenizer.json"
    train_bpe(corpus_file.read_text().splitlines(), 400).save(str(path))
    vocab = Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    tok = upload_tokenizer(client, path)
    assert tok["kind"] == "uploaded" and tok["vocab_size"] == vocab and tok["status"] == "ready"
    spec = {"dataset_id": dataset["id"], "tokenizer": {"tokenizer_id": tok["id"]}, **SMALL}
    job = client.create_job(spec)
    assert job["spec"]["tokenizer"] == {
        "type": "uploaded",
        "vocab_size": vocab,
        "tokenizer_id": tok["id"],
    }
    done = client.wait_job(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    assert client.model(done["model_id"])["config"]["vocab_size"] == vocab


def test_bad_tokenizer_files_are_422(client: Client, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"not": "a tokenizer"}')
    with pytest.raises(TrainyardError) as err:
        upload_tokenizer(client, garbage)
    assert err.value.status == 422 and err.value.code == "invalid_tokenizer"

    no_eot = tmp_path / "no_eot.json"
    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    bare.save(str(no_eot))
    with pytest.raises(TrainyardError) as err:
        upload_tokenizer(client, no_eot)
    assert err.value.status == 422 and "<|endoftext|>" in err.value.message


def test_another_projects_tokenizer_is_404(
    stack: Stack, client: Client, dataset: dict[str, object], corpus_file: Path, tmp_path: Path
) -> None:
    path = tmp_path / "tokenizer.json"
    train_bpe(corpus_file.read_text().splitlines(), 300).save(str(path))
    tok = upload_tokenizer(client, path)
    other = Client(stack.url, stack.new_key("tokenizers-other"))
    with pytest.raises(TrainyardError) as err:
        other.request("GET", f"/v1/tokenizers/{tok['id']}")
    assert err.value.status == 404
    with pytest.raises(TrainyardError) as err:
        other.request("GET", f"/v1/tokenizers/{tok['id']}/tokenizer.json")
    assert err.value.status == 404
    theirs = other.wait_dataset(str(other.upload_dataset(corpus_file)["id"]))
    with pytest.raises(TrainyardError) as err:
        other.create_job({"dataset_id": theirs["id"], "tokenizer": {"tokenizer_id": tok["id"]}})
    assert err.value.status == 404
