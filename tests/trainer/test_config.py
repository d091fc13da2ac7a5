"""Run configuration parsing, presets and size arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.trainer_testkit import make_dataset, run_config
from trainer.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    RunConfig,
)
from trainer.model import build_model
from trainer.sizing import flops_per_token, param_count


def _cfg(tmp_path: Path) -> dict[str, Any]:
    data = {
        "dtype": "uint16",
        "eot_id": 256,
        "train": [{"path": "/x/shard-00000.bin", "start": 0, "end": 90}],
        "val": [{"path": "/x/shard-00000.bin", "start": 90, "end": 100}],
    }
    return run_config(tmp_path, "c", "/x/tokenizer.json", data)


def test_round_trip(tmp_path: Path) -> None:
    raw = _cfg(tmp_path)
    cfg = RunConfig.from_dict(raw)
    assert cfg.training.micro_batch_size == 4 and cfg.data.train[0].end == 90
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda c: c["training"].update(bogus=1), "unknown key.*'bogus'"),
        (lambda c: c.update(extra=True), "unknown key.*'extra'"),
        (lambda c: c["model"].pop("n_layer"), "missing required key 'n_layer'"),
        (lambda c: c["model"].update(n_layer="2"), "run.model.n_layer: .*integer, got '2'"),
        (lambda c: c["model"].update(n_layer=True), "run.model.n_layer: .*integer, got True"),
        (
            lambda c: c["model"].update(n_layer=0),
            "n_layer: .*or equal to 1, got 0",
        ),
        (lambda c: c["training"].update(lr_schedule="step"), "lr_schedule: .*got 'step'"),
        (lambda c: c["model"].update(n_head=3), "divisible"),
        (lambda c: c["training"].update(seq_len=1000), "exceeds model.seq_len"),
        (lambda c: c["model"].update(moe={"num_experts": 4}), "moe needs arch 'llama'"),
        (
            lambda c: c["model"].update(arch="llama", moe={"num_experts": 2, "top_k": 3}),
            r"moe.top_k \(3\) exceeds moe.num_experts \(2\)",
        ),
        (
            lambda c: c["model"].update(arch="llama", moe={"every_k_layers": 9}),
            r"every_k_layers \(9\) exceeds n_layer",
        ),
        (lambda c: c["model"].update(arch="llama", moe={"experts": 4}), "unknown key 'experts'"),
    ],
)
def test_rejects_bad_configs(tmp_path: Path, patch: Any, message: str) -> None:
    raw = _cfg(tmp_path)
    patch(raw)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw)


def _model_cfgs() -> list[ModelConfig]:
    out = [
        ModelConfig(**PRESETS[name](), vocab_size=257, seq_len=32)
        for name in ("tiny", "tiny-llama", "shakespeare")
    ]
    out.append(
        ModelConfig(
            arch="llama",
            n_layer=2,
            n_head=4,
            d_model=64,
            vocab_size=300,
            seq_len=16,
            n_kv_head=2,
            d_ff=100,
            tie_embeddings=False,
        )
    )
    out.append(
        ModelConfig(
            arch="gpt2",
            n_layer=1,
            n_head=2,
            d_model=32,
            vocab_size=300,
            seq_len=16,
            d_ff=48,
            tie_embeddings=False,
        )
    )
    return out


@pytest.mark.parametrize("cfg", _model_cfgs(), ids=lambda c: f"{c.arch}-{c.d_model}")
def test_param_count_matches_model(cfg: ModelConfig) -> None:
    model = build_model(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_preset_sizes() -> None:
    sizes = {
        name: param_count(ModelConfig(**fn(), vocab_size=50257, seq_len=1024))
        for name, fn in PRESETS.items()
    }
    assert 123e6 < sizes["gpt2-small"] < 126e6  # GPT-2 small is 124M
    assert 340e6 < sizes["gpt2-medium"] < 360e6
    llama = ModelConfig(**PRESETS["llama-1b"](), vocab_size=128256, seq_len=2048)
    assert 1.2e9 < param_count(llama) < 1.3e9  # Llama 3.2 1B is 1.24B
    gpt2 = ModelConfig(**PRESETS["gpt2-small"](), vocab_size=50257, seq_len=1024)
    n = param_count(gpt2) - 1024 * 768
    assert flops_per_token(gpt2) == 6 * n + 12 * 12 * 768 * 1024


def test_load_reads_file(tmp_path: Path) -> None:
    import json

    tok, data = make_dataset(tmp_path, n_docs=20)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_config(tmp_path, "r", tok, data)))
    assert RunConfig.load(str(path)).tokenizer_path == tok
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.load(str(path))
