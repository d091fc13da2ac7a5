"""Importing Hugging Face folders that `transformers` itself wrote: safetensors only."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests.stack import Stack
from trainer.tokenizer import byte_tokenizer
from trainyard.client import Client, TrainyardError

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("import"))


def hf_folder(tmp: Path, arch: str) -> Path:
    """A tiny model created and saved by transformers, with a byte tokenizer."""
    import torch

    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=257,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=256,
            eos_token_id=256,
        )
        model = transformers.GPT2LMHeadModel(config)
    elif arch == "mixtral":
        config = transformers.MixtralConfig(
            vocab_size=257,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            bos_token_id=256,
            eos_token_id=256,
        )
        model = transformers.MixtralForCausalLM(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=257,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=256,
            eos_token_id=256,
        )
        model = transformers.LlamaForCausalLM(config)
    folder = tmp / arch
    model.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def import_folder(client: Client, folder: Path, weights: str = "model.safetensors") -> dict:
    with (
        (folder / "config.json").open("rb") as c,
        (folder / weights).open("rb") as w,
        (folder / "tokenizer.json").open("rb") as t,
    ):
        files = {
            "config": ("config.json", c),
            "weights": ("model.safetensors", w),
            "tokenizer": ("tokenizer.json", t),
        }
        return dict(
            client.request(
                "POST", "/v1/models/import", files=files, data={"name": f"imported-{folder.name}"}
            )
        )


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_import_a_transformers_model_and_generate(
    client: Client, tmp_path: Path, arch: str
) -> None:
    folder = hf_folder(tmp_path, arch)
    model = import_folder(client, folder)
    assert model["arch"] == arch and model["job_id"] is None
    assert model["name"] == f"imported-{arch}"
    assert {f["name"] for f in model["files"]} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    text = client.generate(model["id"], "hello", max_new_tokens=8, temperature=0.0)
    assert isinstance(text, str)
    # What comes back is what went in.
    got = client.download(model["id"], "model.safetensors", tmp_path / "back.safetensors")
    assert got.read_bytes() == (folder / "model.safetensors").read_bytes()


def test_import_refuses_pickles_and_broken_configs(client: Client, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "gpt2")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    before = client.request("GET", "/v1/models")["data"]
    with pytest.raises(TrainyardError) as err:
        import_folder(client, folder, weights="pytorch_model.bin")
    assert err.value.status == 422 and err.value.code == "invalid_model"

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(TrainyardError) as err:
        import_folder(client, folder)
    assert err.value.status == 422 and "model_type" in err.value.message
    assert client.request("GET", "/v1/models")["data"] == before


def test_import_needs_every_part(client: Client, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "gpt2")
    with (folder / "config.json").open("rb") as c, pytest.raises(TrainyardError) as err:
        client.request("POST", "/v1/models/import", files={"config": ("config.json", c)})
    assert err.value.status == 400 and "weights" in err.value.message
