"""Checkpoints committed atomically, holding everything for an exact resume.

Layout of checkpoint_dir:
    step-00000100/          model.pt, optimizer.pt, train_state.json (rank 0),
                            rank-00000.pt, rank-00001.pt, ... (sampler + RNG per rank)
                            or, under FSDP, sharded/ (torch.distributed.checkpoint files
                            that every rank writes its shards into) instead of the .pt pair
    latest                  text file naming the newest complete step directory
    best                    text file naming the checkpoint with the lowest val_loss

A checkpoint is written to step-K.tmp/, renamed to step-K/, and only then are `latest`
(and `best`) replaced; a crash at any moment leaves the previous checkpoint intact.
torch.load is only ever used on these files, which the trainer wrote itself, and with
weights_only=True.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.distributed import Dist

LATEST = "latest"
BEST = "best"
SHARDED = "sharded"  # the DCP folder inside a step directory
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after `step` optimizer steps."""
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states of this process."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "python": random.getstate(),
        # numpy arrays are not allowed by weights_only loading; store plain ints instead.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by rng_state."""
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate insists on tuples, which some serialisations turn into lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(
    checkpoint_dir: str,
    step: int,
    *,
    dist: Dist,
    train_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    sharded_state: dict[str, Any] | None = None,
    val_loss: float | None = None,
) -> str:
    """Write a checkpoint from every rank (a collective call); return its final path.

    Give either model_state and optimizer_state (replicated, rank 0 writes them) or
    sharded_state (FSDP's DTensor state dicts, every rank writes its shards). val_loss,
    when measured at this step, makes this checkpoint `best` if it beats the current one.
    """
    if (sharded_state is None) == (model_state is None or optimizer_state is None):
        raise ValueError("give model_state and optimizer_state, or sharded_state")
    name = step_dir_name(step)
    final = os.path.join(checkpoint_dir, name)
    tmp = final + ".tmp"
    if dist.is_main:
        os.makedirs(checkpoint_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash mid-save
        os.makedirs(tmp)
    dist.barrier()
    # Model and optimizer are identical on every rank under DDP, so rank 0 writes them;
    # sampler and RNG differ per rank, so each rank writes its own.
    torch.save(rank_state, os.path.join(tmp, f"rank-{dist.rank:05d}.pt"))
    if sharded_state is not None:
        import torch.distributed.checkpoint as dcp  # FSDP only: 1 s of import for the others

        dcp.save(sharded_state, checkpoint_id=os.path.join(tmp, SHARDED))
    if dist.is_main:
        if model_state is not None:
            torch.save(model_state, os.path.join(tmp, "model.pt"))
            torch.save(optimizer_state, os.path.join(tmp, "optimizer.pt"))
        meta = {
            **train_state,
            "step": step,
            "world_size": dist.world_size,
            "format": "dcp" if sharded_state is not None else "torch",
        }
        with open(os.path.join(tmp, "train_state.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)
    dist.barrier()
    if dist.is_main:
        _fsync_dir(tmp)
        if os.path.exists(final):
            # Same step saved again (preempted before any new step): swap it out.
            old = final + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(checkpoint_dir)
        _write_text_atomic(os.path.join(checkpoint_dir, LATEST), name + "\n")
        if val_loss is not None and _beats_best(checkpoint_dir, val_loss, name):
            _write_text_atomic(os.path.join(checkpoint_dir, BEST), name + "\n")
        prune(checkpoint_dir, keep)
    dist.barrier()
    return final


def list_checkpoints(checkpoint_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = []
    for entry in os.listdir(checkpoint_dir):
        m = _STEP_DIR.match(entry)
        if m and os.path.isdir(os.path.join(checkpoint_dir, entry)):
            found.append((int(m.group(1)), os.path.join(checkpoint_dir, entry)))
    return sorted(found)


def prune(checkpoint_dir: str, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, never the ones `latest` or `best` name."""
    protected = {latest_path(checkpoint_dir), best_path(checkpoint_dir)}
    for _, path in list_checkpoints(checkpoint_dir)[:-keep]:
        if path not in protected:
            shutil.rmtree(path, ignore_errors=True)


def _read_pointer(checkpoint_dir: str, pointer: str) -> str | None:
    path = os.path.join(checkpoint_dir, pointer)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        name = f.read().strip()
    target = os.path.join(checkpoint_dir, name)
    return target if _STEP_DIR.match(name) and os.path.isdir(target) else None


def best_path(checkpoint_dir: str) -> str | None:
    """Path of the checkpoint with the lowest validation loss so far, or None."""
    return _read_pointer(checkpoint_dir, BEST)


def _beats_best(checkpoint_dir: str, val_loss: float, name: str) -> bool:
    best = best_path(checkpoint_dir)
    if best is None or os.path.basename(best) == name:
        return True
    with open(os.path.join(best, "train_state.json"), encoding="utf-8") as f:
        best_loss = json.load(f).get("val_loss")
    return best_loss is None or val_loss < best_loss


def latest_path(checkpoint_dir: str) -> str | None:
    """Path of the newest committed checkpoint, or None."""
    path = _read_pointer(checkpoint_dir, LATEST)
    if path is not None:
        return path
    # The pointer is missing or stale (crash between renames): step dirs only ever appear
    # complete, so the newest one is safe.
    found = list_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint read back for one rank."""

    path: str
    step: int
    model: dict[str, Any]  # empty for sharded checkpoints: see load_sharded
    optimizer: dict[str, Any]
    train_state: dict[str, Any]
    rank_state: dict[str, Any] | None  # None when this rank did not exist at save time

    @property
    def sharded(self) -> bool:
        """Whether model and optimizer were saved by FSDP as DCP shards."""
        return self.train_state.get("format") == "dcp"


@dataclass(frozen=True)
class Place:
    """Where a rank sits: its rank, its data-parallel rank, and the layout's sizes."""

    rank: int
    dp_rank: int
    world_size: int
    tp_size: int = 1

    def source_rank(self, train_state: dict[str, Any]) -> int:
        """Whose sampler and RNG state this rank continues from: its own under the
        layout the checkpoint was saved with; after a change of layout, the first rank of
        the saved group that read the same data-parallel share (the ranks of a
        tensor-parallel group are consecutive and read one stream), so the ranks of a new
        group never read different batches."""
        saved_tp = int(train_state.get("tensor_parallel_size", 1))
        if train_state.get("world_size") == self.world_size and saved_tp == self.tp_size:
            return self.rank
        return self.dp_rank * saved_tp


def load(path: str, rank: int | Place = 0) -> Checkpoint:
    """Read a checkpoint directory for the given rank onto the CPU."""
    with open(os.path.join(path, "train_state.json"), encoding="utf-8") as f:
        train_state = json.load(f)
    if isinstance(rank, Place):
        rank = rank.source_rank(train_state)
    rank_file = os.path.join(path, f"rank-{rank:05d}.pt")
    rank_state = (
        torch.load(rank_file, map_location="cpu", weights_only=True)
        if os.path.exists(rank_file)
        else None
    )
    found = Checkpoint(path, int(train_state["step"]), {}, {}, train_state, rank_state)
    if not found.sharded:
        found.model = torch.load(
            os.path.join(path, "model.pt"), map_location="cpu", weights_only=True
        )
        found.optimizer = torch.load(
            os.path.join(path, "optimizer.pt"), map_location="cpu", weights_only=True
        )
    return found


def load_sharded(path: str, state: dict[str, Any]) -> None:
    """Fill FSDP state dicts (this rank's shards) in place from a checkpoint (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=os.path.join(path, SHARDED))


def load_latest(checkpoint_dir: str, rank: int | Place = 0) -> Checkpoint | None:
    """The newest committed checkpoint for this rank, or None when there is none."""
    path = latest_path(checkpoint_dir)
    return load(path, rank) if path is not None else None
