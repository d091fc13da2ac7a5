"""The SFT parts of run.json: type, sft section and SFT data, with their validation."""

from __future__ import annotations

from typing import Any

import pytest

from trainer.config import ConfigError, RunConfig, SFTDataConfig


def _sft(**sft: Any) -> dict[str, Any]:
    return {
        "type": "sft",
        "tokenizer_path": "/s/train/tokenizer.json",
        "data": {"format": "sft", "train": "/s/train", "val": None},
        "sft": {"base_model_dir": "/models/mdl_x", **sft},
        "training": {"seq_len": 64, "batch_size": 4, "micro_batch_size": 2},
        "output_dir": "/o",
        "checkpoint_dir": "/c",
        "export_dir": "/e",
    }


def test_sft_defaults_and_round_trip() -> None:
    cfg = RunConfig.from_dict(_sft())
    assert cfg.type == "sft" and cfg.model is None
    assert isinstance(cfg.data, SFTDataConfig) and cfg.data.val is None
    assert cfg.sft is not None
    assert cfg.sft.method == "full" and cfg.sft.packing and cfg.sft.epochs is None
    assert cfg.sft.lora.rank == 8 and cfg.sft.lora.alpha == 16.0
    assert cfg.sft.lora.target_modules is None and cfg.sft.eval_max_new_tokens == 64
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_full_sft_section() -> None:
    raw = _sft(
        method="lora",
        lora={"rank": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        packing=False,
        epochs=3,
        eval_prompts=[[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]],
        eval_max_new_tokens=16,
    )
    cfg = RunConfig.from_dict(raw)
    assert cfg.sft is not None and cfg.sft.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.sft.eval_prompts[0][1].content == "hi"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda c: c.pop("sft"), "needs an 'sft' section"),
        (lambda c: c["data"].update(format="tokens"), "missing required key .dtype."),
        (lambda c: c["data"].update(format="csv"), "format"),
        (lambda c: c["sft"].update(method="qlora"), "method: .*got 'qlora'"),
        (lambda c: c["sft"].update(epochs=0), "sft.epochs: .*greater than or equal to 1, got 0"),
        (
            lambda c: c["sft"].update(lora={"rank": 0}),
            "lora.rank: .*or equal to 1, got 0",
        ),
        (lambda c: c["sft"].update(base_model_dir="rel/dir"), "absolute"),
        (lambda c: c["data"].update(train="rel"), "absolute"),
        (lambda c: c["sft"].update(eval_prompts=[[{"role": "bot", "content": "x"}]]), "role"),
        (lambda c: c["sft"].update(eval_prompts=[[]]), "at least 1 item"),
        (lambda c: c["sft"].update(eval_max_new_tokens=0), "max_new_tokens: .*equal to 1, got 0"),
        (lambda c: c.update(model={"arch": "gpt2"}), "model"),
        (lambda c: c.update(type="finetune"), "run.type: .*got 'finetune'"),
    ],
)
def test_rejects_bad_sft_configs(patch: Any, message: str) -> None:
    raw = _sft()
    patch(raw)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw)


def test_pretrain_rejects_sft_parts() -> None:
    raw = _sft()
    raw["type"] = "pretrain"
    with pytest.raises(ConfigError, match="model"):
        RunConfig.from_dict(raw)
