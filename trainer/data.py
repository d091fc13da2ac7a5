"""Training data: windows of memory-mapped token shards.

Training reads the shards in epochs, each a shuffled pass over windows that tile the data
without overlap: epoch e starts its tiling at an offset drawn from (seed, e), so the window
edges move from one epoch to the next, and orders the windows by a permutation drawn from
(seed, e). Every window of an epoch is read once before any is read again (random windows
drawn with replacement leave a fifth of a 1.5-epoch run's tokens unseen). The windows of all
epochs form one stream that every data-parallel rank walks in lockstep (trainer.stream, as
the SFT batches do), so a resume is exact for any world size. Validation uses a fixed list
of windows at any offset, the same at every eval and for every world size.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.config import DataConfig, TokenRange
from trainer.stream import EpochStream
from trainer.task import Batches, micro_batches

_VAL_SEED_OFFSET = 987_654_321  # keeps the validation windows apart from the training order


class TokenRanges:
    """A list of shard ranges seen as one pool of windows."""

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
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)

    @property
    def n_windows(self) -> int:
        """How many distinct windows there are (at every offset)."""
        return int(self.cum[-1])

    def sample_starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw n global window numbers uniformly."""
        return torch.randint(0, self.n_windows, (n,), generator=generator)

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) for the given global window numbers."""
        which = torch.searchsorted(self.cum, starts, right=True) - 1
        numbers = zip(which.tolist(), starts.tolist(), strict=True)
        return self.read([(i, s - int(self.cum[i])) for i, s in numbers])

    def read(self, places: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, T) of the windows at (range, offset) places."""
        rows = [self.arrays[i][o : o + self.seq_len + 1].astype(np.int64) for i, o in places]
        buf = torch.from_numpy(np.stack(rows))  # (B, T+1)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


class Epoch:
    """One shuffled pass over non-overlapping windows: tiles of seq_len tokens (and the
    next one, the last target) that start `phase` tokens into every range."""

    def __init__(self, pool: TokenRanges, seed: int, number: int) -> None:
        rng = np.random.default_rng([seed, number])
        t = pool.seq_len
        self.phase = int(rng.integers(t))
        self.counts = np.maximum((pool.lengths - 1 - self.phase) // t, 0)
        if not self.counts.any():  # every range too short for this phase: tile from 0
            self.phase = 0
            self.counts = (pool.lengths - 1) // t
        self.cum = np.concatenate([[0], np.cumsum(self.counts)])
        self.order = rng.permutation(int(self.cum[-1]))
        self.seq_len = t

    def __len__(self) -> int:
        return len(self.order)

    def place(self, i: int) -> tuple[int, int]:
        """(range, offset) of the epoch's i-th window."""
        tile = int(self.order[i])
        which = int(np.searchsorted(self.cum, tile, side="right")) - 1
        return which, self.phase + (tile - int(self.cum[which])) * self.seq_len


class TokenData(EpochStream[Epoch]):
    """Train and validation windows for one data-parallel rank."""

    def __init__(
        self,
        cfg: DataConfig,
        seq_len: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        super().__init__(rank, world_size)
        self.seq_len = seq_len
        self.device = device
        self.train = TokenRanges(cfg.train, cfg.dtype, seq_len, "train")
        self.val = TokenRanges(cfg.val, cfg.dtype, seq_len, "validation")
        self.seed = seed
        self.val_seed = seed + _VAL_SEED_OFFSET

    def make_epoch(self, number: int) -> Epoch:
        """Epoch `number`'s windows in order."""
        return Epoch(self.train, self.seed, number)

    def next_train_batch(self, micro_batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the next world_size x micro_batch_size windows of the stream."""
        mine = self.take_mine(micro_batch_size)
        x, y = self.train.read([self.epoch_items(e).place(i) for e, i in mine])
        return self._to_device(x), self._to_device(y)

    def val_batches(
        self, micro_batch_size: int, rows: int
    ) -> Batches[tuple[torch.Tensor, torch.Tensor]]:
        """The first `rows` windows of the fixed validation draw, in micro-batches: the same
        windows on every call, rank, world size and micro-batch size. Validation data with
        no more than `rows` windows is scored whole, each window once."""
        n = self.val.n_windows
        if rows >= n:
            starts = torch.arange(n)
        else:
            starts = self.val.sample_starts(rows, torch.Generator().manual_seed(self.val_seed))

        def make(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = self.val.windows(starts[start:end])
            return self._to_device(x), self._to_device(y)

        return micro_batches(len(starts), micro_batch_size, make)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t
