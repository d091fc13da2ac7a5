"""Pretraining windows: a rank with no saved sampler state gets a stream of its own."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.trainer.trainer_testkit import make_dataset
from trainer.config import DataConfig
from trainer.data import TokenData


def test_a_restarted_rank_draws_its_own_stream(tmp_path: Path) -> None:
    _, raw = make_dataset(tmp_path, n_docs=20)
    cfg = DataConfig(**raw)

    def first_batch(rank: int, step: int) -> torch.Tensor:
        data = TokenData(cfg, 16, seed=1, rank=rank, device=torch.device("cpu"))
        data.next_train_batch(4)  # wherever it was is forgotten
        data.restart_at(step, batch_size=8)
        return data.next_train_batch(4)[0]

    assert torch.equal(first_batch(1, 5), first_batch(1, 5))  # every attempt alike
    assert not torch.equal(first_batch(1, 5), first_batch(2, 5))
    assert not torch.equal(first_batch(1, 5), first_batch(1, 6))
