"""SFT batches: chat examples packed into rows, with positions and document ids.

Each epoch shuffles the examples with a generator seeded by (seed, epoch) and packs them
greedily, in that order, into rows of at most seq_len tokens (or one example per row
without packing). The rows of all epochs form one stream that every rank walks in
lockstep (trainer.stream): the position (epoch, row) is the whole sampler state, the same
on every rank, so a resume is exact for any world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from trainer.model import IGNORE_INDEX
from trainer.sft_shards import MASK_NAME, OFFSETS_NAME, TOKENS_NAME, load_sft_index
from trainer.stream import EpochStream
from trainer.task import Batches, micro_batches


@dataclass
class SFTBatch:
    """One micro-batch of packed rows; every tensor is (B, T) int64."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # next token where it is a target, else IGNORE_INDEX
    position_ids: torch.Tensor  # restart at 0 for every example
    doc_ids: torch.Tensor  # example number within the row; padding is a document of its own

    def to(self, device: torch.device) -> SFTBatch:
        """The batch on device (pinned and asynchronous on CUDA)."""
        if device.type != "cuda":
            return self
        return SFTBatch(*(t.pin_memory().to(device, non_blocking=True) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """input_ids, labels, position_ids, doc_ids."""
        return self.input_ids, self.labels, self.position_ids, self.doc_ids

    @property
    def n_targets(self) -> int:
        """How many positions carry loss."""
        return int((self.labels != IGNORE_INDEX).sum())


class SFTExamples:
    """The examples of one SFT shard folder, memory-mapped."""

    def __init__(self, folder: str, seq_len: int, split: str) -> None:
        self.index = load_sft_index(folder)
        if self.index["seq_len"] > seq_len:
            raise ValueError(
                f"the {split} SFT shards in {folder} were prepared for seq_len "
                f"{self.index['seq_len']}, longer than training.seq_len {seq_len}; prepare "
                "them again for this seq_len"
            )
        self.tokens = np.memmap(
            os.path.join(folder, TOKENS_NAME), dtype=np.dtype(self.index["dtype"]), mode="r"
        )
        self.mask = np.memmap(os.path.join(folder, MASK_NAME), dtype=np.uint8, mode="r")
        self.offsets = np.load(os.path.join(folder, OFFSETS_NAME))
        self.lengths = np.diff(self.offsets)
        if len(self.lengths) == 0:
            raise ValueError(f"the {split} SFT shards in {folder} hold no examples")

    def __len__(self) -> int:
        return len(self.lengths)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and loss mask of example i."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b].astype(np.int64), self.mask[a:b].astype(bool)


def pack(lengths: list[int], seq_len: int, packing: bool) -> list[list[int]]:
    """Greedy, order-keeping packing: positions into `lengths`, grouped into rows."""
    rows: list[list[int]] = []
    row: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if row and (not packing or used + n > seq_len):
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def build_rows(examples: SFTExamples, rows: list[list[int]], seq_len: int) -> SFTBatch:
    """Tensors for the given rows of example numbers, padded to seq_len."""
    B = len(rows)
    ids = np.zeros((B, seq_len), dtype=np.int64)
    labels = np.full((B, seq_len), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((B, seq_len), dtype=np.int64)
    docs = np.zeros((B, seq_len), dtype=np.int64)
    for r, row in enumerate(rows):
        t = 0
        for d, i in enumerate(row):
            tok, mask = examples.example(i)
            n = len(tok)
            ids[r, t : t + n] = tok
            # Position j predicts token j+1 of the same example; the last token of an
            # example predicts nothing, so no loss ever reaches across examples.
            labels[r, t : t + n - 1] = np.where(mask[1:], tok[1:], IGNORE_INDEX)
            pos[r, t : t + n] = np.arange(n)
            docs[r, t : t + n] = d
            t += n
        # Padding is one more document, so it never attends to (or from) real tokens.
        pos[r, t:] = np.arange(seq_len - t)
        docs[r, t:] = len(row)
    return SFTBatch(*(torch.from_numpy(a) for a in (ids, labels, pos, docs)))


class SFTData(EpochStream[list[list[int]]]):
    """Train and validation SFT batches for one rank."""

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None,
        seq_len: int,
        *,
        packing: bool,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        super().__init__(rank, world_size)
        self.seq_len, self.packing, self.seed, self.device = seq_len, packing, seed, device
        self.train = SFTExamples(train_dir, seq_len, "train")
        self.val = SFTExamples(val_dir, seq_len, "validation") if val_dir else None

    def make_epoch(self, number: int) -> list[list[int]]:
        """Rows of training example numbers for epoch `number`."""
        order = np.random.default_rng([self.seed, number]).permutation(self.units(self.train))
        return self.rows_of(self.train, order)

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """Rows of training example numbers for one epoch (the latest two are kept)."""
        return self.epoch_items(epoch)

    def rows_per_epoch(self, epochs: int) -> list[int]:
        """How many rows each of the first `epochs` epochs packs into."""
        return [len(self.epoch_rows(e)) for e in range(epochs)]

    def steps_for_epochs(self, epochs: int, batch_size: int) -> int:
        """Optimizer steps that cover `epochs` epochs (the last step may start the next)."""
        return max(1, -(-sum(self.rows_per_epoch(epochs)) // batch_size))

    def next_train_batch(self, micro_batch_size: int) -> SFTBatch:
        """This rank's slice of the next world_size x micro_batch_size rows of the stream."""
        mine = [self.epoch_rows(e)[i] for e, i in self.take_mine(micro_batch_size)]
        return self.batch(self.train, mine)

    def val_batches(self, micro_batch_size: int, rows: int) -> Batches[SFTBatch]:
        """Up to `rows` validation rows in file order, in micro-batches: the same at every
        eval, whatever the micro-batch size."""
        val = self.val
        if val is None:
            return Batches.none()
        kept = self.rows_of(val, np.arange(self.units(val)))[:rows]
        return micro_batches(len(kept), micro_batch_size, lambda a, b: self.batch(val, kept[a:b]))

    def units(self, examples: SFTExamples) -> int:
        """How many units (here examples) the shuffle orders and packing keeps whole."""
        return len(examples)

    def rows_of(self, examples: SFTExamples, order: np.ndarray) -> list[list[int]]:
        """Rows of example numbers: the units in `order`, packed."""
        lengths = examples.lengths[order].tolist()
        return [[int(order[j]) for j in row] for row in pack(lengths, self.seq_len, self.packing)]

    def batch(self, examples: SFTExamples, rows: list[list[int]]) -> SFTBatch:
        """The micro-batch of these rows, on this rank's device."""
        return build_rows(examples, rows, self.seq_len).to(self.device)
