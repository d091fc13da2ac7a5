"""Ids sort by creation time and never collide; storage paths take only our ids."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from trainyard.ids import hash_secret, new_api_key, new_id
from trainyard.storage import Storage

ID = re.compile(r"^[a-z]+_[0-9a-hjkmnp-tv-z]{26}$")


def test_ids_carry_their_prefix_and_a_fixed_shape() -> None:
    for prefix in ("ds", "job", "mdl", "att", "ckpt"):
        value = new_id(prefix)
        assert value.startswith(prefix + "_")
        assert ID.match(value), value


def test_ids_sort_by_creation_time() -> None:
    made = []
    for _ in range(20):
        made.append(new_id("job"))
        time.sleep(0.002)  # one millisecond is the clock's resolution in the id
    assert sorted(made) == made


def test_ids_are_unique() -> None:
    made = [new_id("ds") for _ in range(20000)]
    assert len(set(made)) == len(made)


def test_api_keys_are_fresh_and_stored_only_as_hashes() -> None:
    a, b = new_api_key(), new_api_key()
    assert a != b and a.startswith("ty_") and len(a) > 40
    assert hash_secret(a) == hash_secret(a) != hash_secret(b)
    assert a not in hash_secret(a) and len(hash_secret(a)) == 64


def test_storage_paths_follow_the_layout(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, job, mdl = new_id("ds"), new_id("job"), new_id("mdl")
    assert storage.dataset_source(ds) == tmp_path / "datasets" / ds / "source"
    assert storage.tokens_dir(ds, "byte") == tmp_path / "datasets" / ds / "tokens" / "byte"
    assert storage.attempt_dir(job, 2) == tmp_path / "jobs" / job / "attempt-2"
    assert storage.checkpoint_dir(job) == tmp_path / "jobs" / job / "checkpoints"
    assert storage.model_dir(mdl) == tmp_path / "models" / mdl
    tok = new_id("tok")
    assert storage.tokenizer_file(tok) == tmp_path / "tokenizers" / tok / "tokenizer.json"


BAD_PARTS = [
    "../etc",
    "ds_x/../../y",
    "ds_x/y",
    "..",
    ".",
    "",
    "/etc/passwd",
    "ds_",
    "_x",
    "DS_X",
    "ds x",
    "ds_x\\..",
    "ds_x\x00",
]


@pytest.mark.parametrize("bad", BAD_PARTS)
def test_storage_refuses_components_that_are_not_our_ids(tmp_path: Path, bad: str) -> None:
    storage = Storage(tmp_path)
    calls = [
        lambda: storage.dataset_dir(bad),
        lambda: storage.dataset_source(bad),
        lambda: storage.tokens_dir(bad, "byte"),
        lambda: storage.tokens_dir("ds_ok", bad),
        lambda: storage.tokenizer_file(bad),
        lambda: storage.attempt_dir(bad, 1),
        lambda: storage.checkpoint_dir(bad),
        lambda: storage.model_dir(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="not a storage id"):
            call()


def test_remove_dataset_refuses_a_path_outside_the_root(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    storage = Storage(tmp_path / "root")
    with pytest.raises(ValueError):
        storage.remove_dataset("../victim")
    assert victim.exists()


def test_storage_refuses_an_id_with_a_trailing_newline(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Storage(tmp_path).dataset_dir("ds_x\n")


def test_sweep_removes_only_old_leftovers_in_tmp(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    tmp = storage.uploads_tmp()
    old_file, old_dir, fresh = tmp / "upload-old", tmp / "import-mdl_old", tmp / "upload-new"
    old_file.write_bytes(b"x")
    old_dir.mkdir()
    (old_dir / "model.safetensors").write_bytes(b"x")
    fresh.write_bytes(b"x")
    hours_ago = time.time() - 7 * 3600
    for path in (old_file, old_dir):
        os.utime(path, (hours_ago, hours_ago))
    assert storage.sweep_tmp(6 * 3600) == 2
    assert sorted(p.name for p in tmp.iterdir()) == ["upload-new"]
    assert storage.sweep_tmp(6 * 3600) == 0  # a live upload (fresh) stays
