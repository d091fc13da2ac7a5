"""Shared helpers for the SFT tests: small chat datasets and their shards."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.trainer.trainer_testkit import WORDS, make_dataset, run_config, run_in_process
from trainer.config import EXIT_OK
from trainer.sft_shards import write_sft_shards


def pretrain_base(tmp: Path, preset: str, seq_len: int) -> str:
    """Export dir of a short pretraining run with a seq_len-token context."""
    tok, data = make_dataset(tmp, n_docs=100)
    raw = run_config(tmp, "base", tok, data, preset=preset, max_steps=20, eval_interval=20)
    raw["model"]["seq_len"] = seq_len
    assert run_in_process(raw) == EXIT_OK
    return raw["export_dir"]


def sft_records(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Chat and prompt/completion records whose answers repeat words from the question."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        if i % 3 == 0:
            records.append({"prompt": f"Say: {words}", "completion": words})
            continue
        messages = [
            {"role": "user", "content": f"Say: {words}"},
            {"role": "assistant", "content": words},
        ]
        if i % 3 == 2:
            messages.insert(0, {"role": "system", "content": "Answer briefly."})
        records.append({"messages": messages})
    return records


def make_sft_shards(
    tmp: Path, tokenizer_path: str, seq_len: int, n_train: int = 60, n_val: int = 12
) -> tuple[str, str, str]:
    """Train and val SFT shards under tmp; returns (train_dir, val_dir, their tokenizer)."""
    train, val = str(tmp / "sft-train"), str(tmp / "sft-val")
    write_sft_shards(sft_records(n_train, seed=1), tokenizer_path, train, seq_len=seq_len)
    write_sft_shards(sft_records(n_val, seed=2), tokenizer_path, val, seq_len=seq_len)
    return train, val, str(Path(train) / "tokenizer.json")
