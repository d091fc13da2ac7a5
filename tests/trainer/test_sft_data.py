"""SFT shards and batches: the writer's index, packing, labels, positions and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer.sft_testkit import sft_records
from trainer import chat
from trainer import tokenizer as tokmod
from trainer.model import IGNORE_INDEX
from trainer.sft_data import SFTData, SFTExamples, build_rows, pack
from trainer.sft_shards import Overlong, load_sft_index, write_sft_shards


@pytest.fixture
def byte_tok(tmp_path: Path) -> str:
    path = tmp_path / "byte" / "tokenizer.json"
    path.parent.mkdir()
    tokmod.byte_tokenizer().save(str(path))
    return str(path)


def test_writer_files_and_index(tmp_path: Path, byte_tok: str) -> None:
    records = sft_records(30)
    out = tmp_path / "sft"
    index = write_sft_shards(records, byte_tok, str(out), seq_len=128)
    assert index == load_sft_index(str(out))
    assert index["format"] == "sft" and index["dtype"] == "uint16"
    assert index["added_tokens"] == [tokmod.IM_START, tokmod.IM_END]
    assert index["vocab_size"] == 259 and index["im_start_id"] == 257
    assert index["im_end_id"] == 258 and index["eot_id"] == 256
    assert index["records"] == index["examples"] == 30 and index["overlong"] == 0

    tok = tokmod.load(str(out / "tokenizer.json"))  # the extended tokenizer is saved beside
    offsets = np.load(out / "offsets.npy")
    tokens = np.fromfile(out / "tokens.bin", dtype=np.uint16)
    mask = np.fromfile(out / "mask.bin", dtype=np.uint8)
    assert offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(tokens)
    assert len(mask) == len(tokens) == index["tokens"]
    for i in (0, 1, 2, 29):
        ids, m = chat.tokenize_example(tok, chat.to_messages(records[i]))
        assert tokens[offsets[i] : offsets[i + 1]].tolist() == ids
        assert mask[offsets[i] : offsets[i + 1]].tolist() == m
    assert index["loss_tokens"] == int(mask.sum())  # no example starts with a target


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_overlong_examples(tmp_path: Path, byte_tok: str, policy: Overlong) -> None:
    # A user block is 6 + len + 2 tokens, an assistant block 11 + len + 2.
    long = {"prompt": "p" * 100, "completion": "c" * 100}  # 108 + 113 = 221 tokens
    no_answer_left = {"prompt": "p" * 200, "completion": "c"}  # 208 + 14 = 222 tokens
    records = [*sft_records(5), long, no_answer_left]
    out = str(tmp_path / "o")
    index = write_sft_shards(records, byte_tok, out, seq_len=128, overlong=policy)
    assert index["overlong"] == 2 and index["max_length"] == 222
    if policy == "truncate":
        assert index["truncated"] == 2 and index["dropped_no_loss"] == 1
        assert index["examples"] == 6
        lengths = np.diff(np.load(tmp_path / "o" / "offsets.npy"))
        assert lengths[-1] == 128
    else:
        assert index["dropped_overlong"] == 2 and index["examples"] == 5


def test_pack_is_greedy_and_order_keeping() -> None:
    assert pack([5, 3, 4, 8, 1], 8, packing=True) == [[0, 1], [2], [3], [4]]
    assert pack([5, 3, 4], 8, packing=False) == [[0], [1], [2]]


def test_rows_have_restarting_positions_doc_ids_and_masked_labels(
    tmp_path: Path, byte_tok: str
) -> None:
    write_sft_shards(sft_records(4), byte_tok, str(tmp_path / "s"), seq_len=128)
    ex = SFTExamples(str(tmp_path / "s"), 256, "train")
    n0, n1 = (int(n) for n in ex.lengths[:2])
    batch = build_rows(ex, [[0, 1]], 256)
    ids0, m0 = ex.example(0)
    ids1, m1 = ex.example(1)
    assert batch.input_ids[0, : n0 + n1].tolist() == [*ids0.tolist(), *ids1.tolist()]
    assert batch.position_ids[0, :n0].tolist() == list(range(n0))
    assert batch.position_ids[0, n0 : n0 + n1].tolist() == list(range(n1))
    assert batch.doc_ids[0, :n0].eq(0).all() and batch.doc_ids[0, n0 : n0 + n1].eq(1).all()
    assert batch.doc_ids[0, n0 + n1 :].eq(2).all()  # padding is its own document
    labels = batch.labels[0]
    want0 = [int(t) if k else IGNORE_INDEX for t, k in zip(ids0[1:], m0[1:], strict=True)]
    assert labels[: n0 - 1].tolist() == want0
    assert labels[n0 - 1] == IGNORE_INDEX  # never predict across examples
    assert labels[n0 + n1 - 1 :].eq(IGNORE_INDEX).all()
    # Every label is an assistant token or the end token that closes it.
    im_end = 258
    targets = labels[labels != IGNORE_INDEX].tolist()
    assert im_end in targets and 257 not in targets
    assert batch.n_targets == int(m0[1:].sum() + m1[1:].sum())


def _data(folder: str, rank: int = 0, world: int = 1, packing: bool = True) -> SFTData:
    return SFTData(
        folder,
        folder,
        128,
        packing=packing,
        seed=3,
        rank=rank,
        world_size=world,
        device=torch.device("cpu"),
    )


def test_epochs_shuffle_deterministically_and_cover_every_example(
    tmp_path: Path, byte_tok: str
) -> None:
    write_sft_shards(sft_records(40), byte_tok, str(tmp_path / "s"), seq_len=128)
    a, b = _data(str(tmp_path / "s")), _data(str(tmp_path / "s"))
    assert a.epoch_rows(0) == b.epoch_rows(0) and a.epoch_rows(0) != a.epoch_rows(1)
    for e in range(2):
        rows = a.epoch_rows(e)
        assert sorted(i for row in rows for i in row) == list(range(40))
        assert all(sum(int(a.train.lengths[i]) for i in row) <= 128 for row in rows)
    unpacked = _data(str(tmp_path / "s"), packing=False)
    assert len(unpacked.epoch_rows(0)) == 40 > len(a.epoch_rows(0))
    per_epoch = a.rows_per_epoch(2)
    assert a.steps_for_epochs(2, 4) == -(-sum(per_epoch) // 4)


def test_ranks_split_the_stream_and_resume_exactly(tmp_path: Path, byte_tok: str) -> None:
    folder = str(tmp_path / "s")
    write_sft_shards(sft_records(40), byte_tok, folder, seq_len=128)
    single = _data(folder)
    r0, r1 = _data(folder, 0, 2), _data(folder, 1, 2)
    for _ in range(12):  # crosses into later epochs
        both = single.next_train_batch(4)
        assert torch.equal(both.input_ids[:2], r0.next_train_batch(2).input_ids)
        assert torch.equal(both.input_ids[2:], r1.next_train_batch(2).input_ids)
    assert single.epoch >= 1
    resumed = _data(folder)
    resumed.load_state_dict(single.state_dict())
    for _ in range(5):
        x, y = single.next_train_batch(3), resumed.next_train_batch(3)
        assert all(torch.equal(p, q) for p, q in zip(x.tensors(), y.tensors(), strict=True))


def test_val_batches_are_fixed(tmp_path: Path, byte_tok: str) -> None:
    folder = str(tmp_path / "s")
    write_sft_shards(sft_records(40), byte_tok, folder, seq_len=128)
    data = _data(folder)
    v1, v2 = data.val_batches(2, 6), data.val_batches(2, 6)
    assert len(v1) == 3
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(v1, v2, strict=True))


def test_shards_for_a_longer_seq_len_are_refused(tmp_path: Path, byte_tok: str) -> None:
    write_sft_shards(sft_records(4), byte_tok, str(tmp_path / "s"), seq_len=128)
    with pytest.raises(ValueError, match="prepare"):
        SFTExamples(str(tmp_path / "s"), 64, "train")


def test_skipping_rows_matches_reading_them(tmp_path: Path, byte_tok: str) -> None:
    folder = str(tmp_path / "s")
    write_sft_shards(sft_records(40), byte_tok, folder, seq_len=128)
    read, skipped = _data(folder), _data(folder)
    for _ in range(9):
        read.next_train_batch(3)
    skipped.skip(27)
    assert skipped.state_dict() == read.state_dict() and read.epoch >= 1


def test_a_rank_restarted_at_a_step_is_where_the_stream_got_to(
    tmp_path: Path, byte_tok: str
) -> None:
    folder = str(tmp_path / "s")
    write_sft_shards(sft_records(40), byte_tok, folder, seq_len=128)
    read, restarted = _data(folder, 0, 2), _data(folder, 1, 2)
    for _ in range(9):  # 9 steps of batch_size 6: micro-batches of 3 rows on 2 ranks
        read.next_train_batch(3)
    restarted.next_train_batch(3)  # wherever it was is forgotten
    restarted.restart_at(9, batch_size=6)
    assert restarted.state_dict() == read.state_dict() and read.epoch >= 1


def test_val_rows_are_the_same_in_any_micro_batch_size(tmp_path: Path, byte_tok: str) -> None:
    folder = str(tmp_path / "s")
    write_sft_shards(sft_records(40), byte_tok, folder, seq_len=128)
    data = _data(folder)

    def rows(micro: int) -> torch.Tensor:
        batches = data.val_batches(micro, 3)
        return torch.cat([batches[i].labels for i in range(len(batches))])

    assert rows(3).shape[0] == 3
    assert torch.equal(rows(3), rows(1)) and torch.equal(rows(3), rows(2))
