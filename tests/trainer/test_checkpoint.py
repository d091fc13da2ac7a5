"""Checkpoint commit protocol: atomic directories, latest pointer, pruning, RNG."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint as ckpt
from trainer.distributed import Dist


def _save(root: Path, step: int, keep: int = 2, val_loss: float | None = None) -> str:
    return ckpt.save(
        str(root),
        step,
        dist=Dist(),
        val_loss=val_loss,
        model_state={"w": torch.full((2,), float(step))},
        optimizer_state={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        train_state={"tokens": step * 10, "val_loss": val_loss},
        rank_state={"data": {"generator": torch.Generator().get_state()}, "rng": ckpt.rng_state()},
        keep=keep,
    )


def test_save_prune_and_load_latest(tmp_path: Path) -> None:
    assert ckpt.load_latest(str(tmp_path / "none")) is None
    for step in (10, 20, 30):
        path = _save(tmp_path, step)
        assert path == str(tmp_path / f"step-{step:08d}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step-00000020",
        "step-00000030",
    ]
    loaded = ckpt.load_latest(str(tmp_path))
    assert loaded is not None and loaded.step == 30
    assert loaded.train_state["tokens"] == 300 and loaded.rank_state is not None
    assert torch.equal(loaded.model["w"], torch.full((2,), 30.0))
    assert ckpt.load(loaded.path, rank=1).rank_state is None  # rank absent at save time

    # Saving the same step again replaces it in place.
    _save(tmp_path, 30)
    assert ckpt.latest_path(str(tmp_path)) == str(tmp_path / "step-00000030")


def test_latest_falls_back_to_newest_complete_dir(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    _save(tmp_path, 6)
    (tmp_path / "step-00000007.tmp").mkdir()  # a crash mid-save: never picked up
    (tmp_path / "latest").write_text("step-00000099\n")  # stale pointer
    assert ckpt.latest_path(str(tmp_path)) == str(tmp_path / "step-00000006")
    (tmp_path / "latest").unlink()
    assert ckpt.latest_path(str(tmp_path)) == str(tmp_path / "step-00000006")


def test_rng_state_round_trip(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    loaded = ckpt.load_latest(str(tmp_path))
    assert loaded is not None and loaded.rank_state is not None
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(loaded.rank_state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_best_checkpoint_is_kept_while_best(tmp_path: Path) -> None:
    def names() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir())

    for step, val_loss in ((10, 2.0), (20, 1.5), (30, 1.8), (40, None), (50, 1.9)):
        _save(tmp_path, step, keep=2, val_loss=val_loss)
    # The newest two plus step 20, the lowest val_loss, which pruning skips.
    assert names() == ["best", "latest", "step-00000020", "step-00000040", "step-00000050"]
    assert ckpt.best_path(str(tmp_path)) == str(tmp_path / "step-00000020")
    _save(tmp_path, 60, keep=2, val_loss=1.0)
    assert ckpt.best_path(str(tmp_path)) == str(tmp_path / "step-00000060")
    assert names() == ["best", "latest", "step-00000050", "step-00000060"]
    # Re-saving the best step in place keeps the pointer valid.
    _save(tmp_path, 60, keep=2, val_loss=1.0)
    assert (tmp_path / "best").read_text().strip() == "step-00000060"


def test_a_new_layout_continues_the_stream_of_the_same_data_parallel_share() -> None:
    """Sampler and RNG state follow the data-parallel share: the ranks of a tensor-parallel
    group read one stream, so after a change of layout they continue the same one."""
    tp2_of_4 = {"world_size": 4, "tensor_parallel_size": 2}  # groups {0, 1} and {2, 3}
    # The same layout: each rank its own file.
    assert [ckpt.Place(r, r // 2, 4, 2).source_rank(tp2_of_4) for r in range(4)] == [0, 1, 2, 3]
    # Saved under TP, read under DDP on 2 ranks: the first rank of each saved group.
    assert [ckpt.Place(r, r, 2).source_rank(tp2_of_4) for r in range(2)] == [0, 2]
    # Saved by 2 DDP or FSDP ranks, read by one TP group of 2: both continue rank 0.
    fsdp2 = {"world_size": 2}
    assert [ckpt.Place(r, 0, 2, 2).source_rank(fsdp2) for r in range(2)] == [0, 0]
    # DDP growing from 2 to 4 ranks: the new ranks find no file of theirs (and reseed).
    assert [ckpt.Place(r, r, 4).source_rank(fsdp2) for r in range(4)] == [0, 1, 2, 3]
