"""A fine-tuning checkpoint exported on its own is the model the run exported at that step:
the same files and the same weights, with LoRA adapters folded in and from FSDP's shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.sft_testkit import make_sft_shards, pretrain_base
from tests.trainer.test_sft_train import sft_config
from tests.trainer.trainer_testkit import run_in_process
from trainer import checkpoint as ckpt
from trainer.checkpoint_export import export_checkpoint
from trainer.config import EXIT_OK, RunConfig
from trainer.sample import complete, load_model

SEQ_LEN = 64


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("base")
    export = pretrain_base(tmp, "tiny", SEQ_LEN)
    train, val, tok = make_sft_shards(tmp, str(Path(export) / "tokenizer.json"), SEQ_LEN)
    return {"export": export, "train": train, "val": val, "tokenizer": tok}


def finished_run(tmp: Path, base: dict[str, Any], method: str) -> RunConfig:
    raw = sft_config(tmp, base, method, max_steps=4, eval_interval=4, checkpoint_interval=2)
    raw["training"]["seq_len"] = SEQ_LEN
    raw["sft"]["eval_prompts"] = []
    assert run_in_process(raw) == EXIT_OK
    return RunConfig.from_dict(raw)


def same_weights(a: str, b: str) -> None:
    left, right = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    assert set(left) == set(right)
    for key, value in left.items():
        assert torch.equal(value, right[key]), key


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_last_checkpoint_exports_as_the_run_did(
    tmp_path: Path, base: dict[str, Any], method: str
) -> None:
    run = finished_run(tmp_path, base, method)
    steps = [s for s, _ in ckpt.list_checkpoints(run.checkpoint_dir)]
    assert steps == [2, 4]
    out = export_checkpoint(run, f"{run.checkpoint_dir}/step-00000004", str(tmp_path / "c4"))
    same_weights(out, run.export_dir)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (Path(out) / name).read_text() == (Path(run.export_dir) / name).read_text()

    earlier = export_checkpoint(run, f"{run.checkpoint_dir}/step-00000002", str(tmp_path / "c2"))
    with pytest.raises(AssertionError):  # two steps of training apart
        same_weights(earlier, out)
    reply = complete(load_model(earlier), "<|im_start|>user\nSay: a<|im_end|>\n", 4, 0.0)
    assert reply.completion_tokens >= 1


def test_a_sharded_checkpoint_exports_like_the_plain_one(
    tmp_path: Path, base: dict[str, Any]
) -> None:
    import torch.distributed.checkpoint as dcp

    run = finished_run(tmp_path, base, "full")
    plain = f"{run.checkpoint_dir}/step-00000004"
    sharded = tmp_path / "sharded-step"
    sharded.mkdir()
    state = torch.load(f"{plain}/model.pt", weights_only=True)
    # As FSDP writes it: the model beside the optimizer, under the folder's `sharded/`.
    dcp.save({"model": state, "optimizer": {}}, checkpoint_id=str(sharded / ckpt.SHARDED))
    (sharded / "train_state.json").write_text(json.dumps({"step": 4, "format": "dcp"}))
    out = export_checkpoint(run, str(sharded), str(tmp_path / "from-shards"))
    same_weights(out, run.export_dir)


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path, base: dict[str, Any]) -> None:
    run = finished_run(tmp_path, base, "full")
    step = Path(run.checkpoint_dir) / "step-00000004"
    state = torch.load(step / "model.pt", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, step / "model.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        export_checkpoint(run, str(step), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
