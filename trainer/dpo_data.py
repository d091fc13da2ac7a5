"""DPO batches: preference pairs packed into rows, each answer a document of its own.

The shards are SFT shards written with kind "dpo" (see trainer.sft_shards): examples 2i
and 2i+1 are pair i's chosen and rejected sequences. The unit that is shuffled and packed
is the pair, so a pair never spans two rows or micro-batches; within a row its two
sequences are separate documents (positions restart, attention stays inside each), which
keeps them apart. Without packing a row holds one pair. The stream and its state are
SFTData's, so resume is exact in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.sft_data import SFTBatch, SFTData, SFTExamples, build_rows, pack


@dataclass
class DPOBatch(SFTBatch):
    """Packed pairs; seq_ids says which sequence of the batch each position belongs to."""

    # (B, T): 2k for pair k's chosen tokens, 2k+1 for its rejected ones, -1 for padding.
    seq_ids: torch.Tensor
    pairs: int  # how many preference pairs the batch holds

    def to(self, device: torch.device) -> DPOBatch:
        """The batch on device (pinned and asynchronous on CUDA)."""
        if device.type != "cuda":
            return self
        ids, labels, pos, docs, seqs = (
            t.pin_memory().to(device, non_blocking=True) for t in self.tensors()
        )
        return DPOBatch(ids, labels, pos, docs, seq_ids=seqs, pairs=self.pairs)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """input_ids, labels, position_ids, doc_ids, seq_ids."""
        return (*super().tensors(), self.seq_ids)


def build_pair_rows(examples: SFTExamples, rows: list[list[int]], seq_len: int) -> DPOBatch:
    """Tensors for rows of example numbers that hold whole pairs, padded to seq_len."""
    base = build_rows(examples, rows, seq_len)
    seq_ids = base.doc_ids.clone()
    first = 0  # number of the row's first sequence within the batch
    for r, row in enumerate(rows):
        # doc_ids number the row's sequences from 0; padding is the document after them.
        seq_ids[r] = torch.where(base.doc_ids[r] < len(row), base.doc_ids[r] + first, -1)
        first += len(row)
    ids, labels, pos, docs = base.tensors()
    return DPOBatch(ids, labels, pos, docs, seq_ids=seq_ids, pairs=first // 2)


class DPOData(SFTData):
    """Train and validation preference pairs for one rank."""

    def __init__(self, train_dir: str, val_dir: str | None, seq_len: int, **kw: object) -> None:
        super().__init__(train_dir, val_dir, seq_len, **kw)  # type: ignore[arg-type]
        for split, ex in (("train", self.train), ("validation", self.val)):
            if ex is not None and ex.index.get("kind") != "dpo":
                raise ValueError(
                    f"the {split} shards were not written as preference pairs (kind "
                    f"{ex.index.get('kind', 'sft')!r}); write them with kind 'dpo'"
                )

    def units(self, examples: SFTExamples) -> int:
        return len(examples) // 2

    def rows_of(self, examples: SFTExamples, order: np.ndarray) -> list[list[int]]:
        lengths = (examples.lengths[0::2] + examples.lengths[1::2])[order].tolist()
        rows = pack(lengths, self.seq_len, self.packing)
        return [[2 * int(order[j]) + side for j in row for side in (0, 1)] for row in rows]

    def next_train_batch(self, micro_batch_size: int) -> DPOBatch:
        """This rank's slice of the next world_size x micro_batch_size rows of pairs."""
        batch = super().next_train_batch(micro_batch_size)
        assert isinstance(batch, DPOBatch)
        return batch

    def batch(self, examples: SFTExamples, rows: list[list[int]]) -> DPOBatch:
        return build_pair_rows(examples, rows, self.seq_len).to(self.device)
