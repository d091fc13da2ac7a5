"""Pretraining windows: shuffled epochs of non-overlapping windows, one stream that the
ranks walk in lockstep, and a place in it that any world size can resume from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import DataConfig
from trainer.data import TokenData
from trainer.task import StaleSamplerState

SEQ = 16


@pytest.fixture
def cfg(tmp_path: Path) -> DataConfig:
    """A shard whose token at position i is i: a window's first input names its start.
    Training reads two ranges with a gap (as shards and document splits give them),
    one of them shorter than two windows."""
    path = tmp_path / "tokens.bin"
    np.arange(2000, dtype=np.uint16).tofile(path)
    ranges = [
        {"path": str(path), "start": 0, "end": 1200},
        {"path": str(path), "start": 1300, "end": 1330},
    ]
    val = [{"path": str(path), "start": 1500, "end": 2000}]
    return DataConfig(dtype="uint16", eot_id=0, train=ranges, val=val)  # type: ignore[arg-type]


def stream(cfg: DataConfig, *, rank: int = 0, world: int = 1, seed: int = 7) -> TokenData:
    return TokenData(cfg, SEQ, seed=seed, rank=rank, world_size=world, device=torch.device("cpu"))


def starts(data: TokenData, n_batches: int, micro: int) -> list[int]:
    """The absolute start of every window the rank reads, in order."""
    out: list[int] = []
    for _ in range(n_batches):
        x, y = data.next_train_batch(micro)
        assert torch.equal(y, x + 1)  # targets are the next tokens, never across a gap
        assert x.shape == (micro, SEQ)
        out += x[:, 0].tolist()
    return out


def test_an_epoch_reads_every_tile_once_and_the_next_moves_the_edges(cfg: DataConfig) -> None:
    data = stream(cfg)
    epoch0 = data.epoch_items(0)
    first = starts(data, len(epoch0), 1)
    phase = first[0] % SEQ
    # Non-overlapping tiles of the first range, starting `phase` tokens in; the second
    # range (30 tokens) holds one window at phases up to 13 and none past them.
    tiles = list(range(phase, 1200 - SEQ, SEQ))
    if phase <= 30 - SEQ - 1:
        tiles.append(1300 + phase)
    assert sorted(first) == tiles
    assert first != sorted(first)  # shuffled
    # Later epochs start their tiles elsewhere (the phase is drawn per epoch).
    phases = {data.epoch_items(e).phase for e in range(8)}
    assert len(phases) > 1
    assert epoch0.phase == phase
    assert data.epoch == 1 and data.cursor == 0


def test_ranks_split_the_stream_and_a_resume_is_exact_for_any_world_size(
    cfg: DataConfig,
) -> None:
    # One process reading micro-batches of 8 reads what four ranks of 2 read together.
    whole = starts(stream(cfg), 200, 8)
    ranks = [starts(stream(cfg, rank=r, world=4), 200, 2) for r in range(4)]
    together = [s for i in range(200) for r in range(4) for s in ranks[r][2 * i : 2 * i + 2]]
    assert together == whole
    assert len(set(whole[:60])) == 60  # no window twice within the first epoch's share

    # Saved after 50 steps by two ranks, resumed by one: the stream goes on where it was.
    two = [stream(cfg, rank=r, world=2) for r in range(2)]
    for data in two:
        starts(data, 50, 4)
    state = two[0].state_dict()
    assert state == two[1].state_dict()  # the same place on every rank
    one = stream(cfg)
    one.load_state_dict(state)
    assert starts(one, 20, 8) == whole[400:560]

    # A rank with no saved state is placed by the step alone.
    fresh = stream(cfg, rank=1, world=2)
    fresh.restart_at(50, batch_size=8)
    assert fresh.state_dict() == state
    assert starts(fresh, 1, 4) == whole[404:408]


def test_the_seed_decides_the_order_and_validation_stays_fixed(cfg: DataConfig) -> None:
    assert starts(stream(cfg, seed=7), 5, 4) == starts(stream(cfg, seed=7), 5, 4)
    assert starts(stream(cfg, seed=7), 5, 4) != starts(stream(cfg, seed=8), 5, 4)
    val = [x for x, _ in stream(cfg).val_batches(4, 3)]
    assert all(int(x.min()) >= 1500 and int(x.max()) < 2000 for x in val)
    again = stream(cfg, rank=1, world=2)
    starts(again, 3, 4)
    later = [x for x, _ in again.val_batches(4, 3)]
    assert all(torch.equal(a, b) for a, b in zip(val, later, strict=True))


def test_a_sampler_state_of_the_random_window_sampler_is_refused_by_name(
    cfg: DataConfig,
) -> None:
    with pytest.raises(StaleSamplerState, match="stream position"):
        stream(cfg).load_state_dict({"generator": torch.Generator().get_state()})


def test_ranges_shorter_than_two_windows_still_give_every_epoch_a_window(
    tmp_path: Path,
) -> None:
    # 20 tokens hold one window of 17 at offsets 0 to 3 only: an epoch whose phase is
    # later tiles from 0 instead of coming out empty.
    path = tmp_path / "short.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    train = [{"path": str(path), "start": s, "end": s + 20} for s in (0, 40)]
    val = [{"path": str(path), "start": 70, "end": 100}]
    cfg = DataConfig(dtype="uint16", eot_id=0, train=train, val=val)  # type: ignore[arg-type]
    data = stream(cfg)
    read = starts(data, 40, 1)
    assert data.epoch == 20
    assert {s % 40 for s in read} <= {0, 1, 2, 3}
    assert any(data.epoch_items(e).phase == 0 for e in range(20))


def test_validation_windows_are_the_same_in_any_micro_batch_size(cfg: DataConfig) -> None:
    def windows(micro: int) -> torch.Tensor:
        batches = stream(cfg).val_batches(micro, 12)
        return torch.cat([batches[i][0] for i in range(len(batches))])

    whole = windows(12)
    assert len(stream(cfg).val_batches(5, 12)) == 3  # 5 + 5 + 2
    assert whole.shape[0] == 12
    assert all(torch.equal(whole, windows(m)) for m in (1, 4, 5))


def test_validation_data_smaller_than_the_set_is_scored_whole_each_window_once(
    cfg: DataConfig,
) -> None:
    n = 500 - SEQ  # windows of the 500 validation tokens
    batches = stream(cfg).val_batches(64, 10_000)
    first = torch.cat([batches[i][0][:, 0] for i in range(len(batches))])
    assert sorted(first.tolist()) == list(range(1500, 1500 + n))
    assert len(batches) == -(-n // 64)
