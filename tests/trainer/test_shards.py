"""Shard writing and train/validation splitting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.trainer_testkit import corpus
from trainer import shards
from trainer import tokenizer as tokmod


def _read_all(out: Path, index: dict) -> np.ndarray:
    parts = [np.fromfile(out / s["path"], dtype=index["dtype"]) for s in index["shards"]]
    return np.concatenate(parts)


def test_byte_fast_path_matches_tokenizer(tmp_path: Path) -> None:
    tok = tokmod.byte_tokenizer()
    tok_path = tmp_path / "byte.json"
    tok.save(str(tok_path))
    docs = [*corpus(30), "naïve ✓", f"has a literal {tokmod.EOT} inside", ""]
    index = shards.write_shards(
        docs, str(tok_path), str(tmp_path / "out"), append_eot=True, shard_tokens=1000, batch_docs=7
    )
    expected: list[int] = []
    for enc in tok.encode_batch(docs):
        expected += [*enc.ids, 256]
    got = _read_all(tmp_path / "out", index)
    assert got.tolist() == expected
    assert index["dtype"] == "uint16" and index["eot_id"] == 256 and index["vocab_size"] == 257
    assert index["tokens"] == len(expected)
    assert len(index["shards"]) == -(-len(expected) // 1000)
    assert all(s["tokens"] == 1000 for s in index["shards"][:-1])
    on_disk = json.loads((tmp_path / "out" / "index.json").read_text())
    assert on_disk == index
    # Nothing temporary is left next to the result.
    assert sorted(os.listdir(tmp_path)) == ["byte.json", "out"]


def test_bpe_shards_uint16(tmp_path: Path) -> None:
    docs = corpus(60)
    tok = tokmod.train_bpe(docs, vocab_size=350)
    tok_path = tmp_path / "bpe.json"
    tok.save(str(tok_path))
    out = tmp_path / "out"
    index = shards.write_shards(docs, str(tok_path), str(out), append_eot=False)
    assert index["dtype"] == "uint16"
    got = _read_all(out, index)
    assert got.tolist() == [i for e in tok.encode_batch(docs) for i in e.ids]
    # Rewriting replaces the folder as a whole.
    again = shards.write_shards(docs[:5], str(tok_path), str(out), append_eot=True)
    assert shards.load_index(str(out)) == again


def test_split_ranges(tmp_path: Path) -> None:
    index = {
        "tokens": 250,
        "shards": [
            {"path": "shard-00000.bin", "tokens": 100},
            {"path": "shard-00001.bin", "tokens": 100},
            {"path": "shard-00002.bin", "tokens": 50},
        ],
    }
    train, val = shards.split_ranges(index, str(tmp_path), 0.3)
    p = [str(tmp_path / f"shard-0000{i}.bin") for i in range(3)]
    assert train == [{"path": p[0], "start": 0, "end": 100}, {"path": p[1], "start": 0, "end": 75}]
    assert val == [{"path": p[1], "start": 75, "end": 100}, {"path": p[2], "start": 0, "end": 50}]
    with pytest.raises(ValueError, match="training split is empty"):
        one = {"tokens": 1, "shards": [{"path": "shard-00000.bin", "tokens": 1}]}
        shards.split_ranges(one, str(tmp_path), 0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        shards.split_ranges(index, str(tmp_path), 1.0)
