"""Training data: random windows from memory-mapped token shards.

Every rank draws from its own torch.Generator seeded with (seed, rank), so ranks see
different windows, and the generator state goes into checkpoints for an exact resume.
Validation uses a fixed list of windows, the same at every eval and for every world size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.config import DataConfig, TokenRange

_VAL_SEED_OFFSET = 987_654_321  # keeps the validation windows apart from any rank stream


class TokenRanges:
    """A list of shard ranges seen as one pool of sampleable windows."""

    def __init__(self, ranges: list[TokenRange], dtype: str, seq_len: int, split: str) -> None:
        self.seq_len = seq_len
        self.arrays: list[np.ndarray] = []
        counts: list[int] = []
        maps: dict[str, np.ndarray] = {}
        for r in ranges:
            if r.path not in maps:
                maps[r.path] = np.memmap(r.path, dtype=np.dtype(dtype), mode="r")
            n_tokens = maps[r.path].shape[0]
            if not 0 <= r.start <= r.end <= n_tokens:
                raise ValueError(
                    f"{split} range [{r.start}, {r.end}) is outside {r.path} ({n_tokens} tokens)"
                )
            # A window needs seq_len + 1 tokens: inputs plus the next-token targets.
            n_windows = r.end - r.start - seq_len
            if n_windows > 0:
                self.arrays.append(maps[r.path][r.start : r.end])
                counts.append(n_windows)
        if not counts:
            raise ValueError(
                f"the {split} data has no range with at least seq_len + 1 = {seq_len + 1} tokens"
            )
        # Window starts are numbered across all ranges; cum[i] is the first one of range i.
        self.cum = torch.tensor([0, *np.cumsum(counts).tolist()], dtype=torch.int64)

    @property
    def n_windows(self) -> int:
        """How many distinct windows there are."""
        return int(self.cum[-1])

    def sample_starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n global window numbers uniformly."""
        return torch.randint(0, self.n_windows, (n,), generator=generator)

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) for the given global window numbers."""
        which = torch.searchsorted(self.cum, starts, right=True) - 1
        rows = []
        for i, s in zip(which.tolist(), starts.tolist(), strict=True):
            offset = s - int(self.cum[i])
            rows.append(self.arrays[i][offset : offset + self.seq_len + 1].astype(np.int64))
        buf = torch.from_numpy(np.stack(rows))  # (B, T+1)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class TokenData:
    """Train and validation windows for one rank."""

    def __init__(
        self, cfg: DataConfig, seq_len: int, *, seed: int, rank: int, device: torch.device
    ) -> None:
        self.seq_len = seq_len
        self.device = device
        self.splits = {
            "train": TokenRanges(cfg.train, cfg.dtype, seq_len, "train"),
            "val": TokenRanges(cfg.val, cfg.dtype, seq_len, "validation"),
        }
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator().manual_seed(_rank_seed(seed, rank))
        self.val_seed = seed + _VAL_SEED_OFFSET

    def get_batch(
        self, split: str, micro_batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (x, y) windows of shape (B, T) from split, on this rank's device."""
        if seq_len != self.seq_len:
            raise ValueError(f"data was opened for seq_len {self.seq_len}, asked for {seq_len}")
        pool = self.splits[split]
        x, y = pool.windows(pool.sample_starts(micro_batch_size, generator))
        return self._to_device(x), self._to_device(y)

    def next_train_batch(self, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training micro-batch from this rank's sampler."""
        return self.get_batch("train", micro_batch_size, self.seq_len, self.generator)

    def val_batches(
        self, micro_batch_size: int, n_batches: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches: identical on every call, rank and world size."""
        g = torch.Generator().manual_seed(self.val_seed)
        return [self.get_batch("val", micro_batch_size, self.seq_len, g) for _ in range(n_batches)]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def state_dict(self) -> dict[str, Any]:
        """Sampler position of this rank, for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a sampler position saved by state_dict."""
        self.generator.set_state(state["generator"])

    def restart_at(self, step: int, batch_size: int) -> None:
        """Give a rank that did not exist when the checkpoint was saved (world size grew) a
        fresh stream, distinct from the others'."""
        self.generator.manual_seed(self.seed * 7919 + self.rank + step)


def _rank_seed(seed: int, rank: int) -> int:
    # A large odd multiplier keeps (seed, rank) pairs from colliding for nearby seeds.
    return (seed * 1_000_003 + rank) % (2**63)
