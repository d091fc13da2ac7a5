"""DPO: preference shards, the loss against a direct computation, and training under torchrun."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.trainer.sft_testkit import pretrain_base
from tests.trainer.trainer_testkit import (
    WORDS,
    read_events,
    run_in_process,
    run_trainer,
    write_config,
)
from trainer import chat
from trainer import tokenizer as tokmod
from trainer.config import EXIT_OK, EXIT_PREEMPTED, RunConfig
from trainer.distributed import Dist
from trainer.dpo import DPOTask, pair_sums, sequence_logps
from trainer.dpo_data import DPOBatch, DPOData
from trainer.events import EventWriter
from trainer.loop import Trainer
from trainer.sft_data import SFTExamples
from trainer.sft_shards import write_sft_shards

SEQ_LEN = 128


def preference_records(n: int, seed: int) -> list[dict[str, Any]]:
    """Pairs whose preferred answer repeats the asked words and whose other answer refuses."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        records.append(
            {
                "input": {"messages": [{"role": "user", "content": f"Say: {words}"}]},
                "preferred_output": [{"role": "assistant", "content": words}],
                "non_preferred_output": [{"role": "assistant", "content": "no."}],
            }
        )
    return records


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("dpo-base")
    export = pretrain_base(tmp, "tiny", SEQ_LEN)
    tok = str(Path(export) / "tokenizer.json")
    train, val = str(tmp / "dpo-train"), str(tmp / "dpo-val")
    write_sft_shards(preference_records(64, 1), tok, train, seq_len=SEQ_LEN, kind="dpo")
    write_sft_shards(preference_records(16, 2), tok, val, seq_len=SEQ_LEN, kind="dpo")
    return {"export": export, "train": train, "val": val, "tokenizer": f"{train}/tokenizer.json"}


def dpo_config(tmp: Path, base: dict[str, str], method: str = "full", **training: Any) -> dict:
    """A run.json dict for a tiny DPO run on the base fixture."""
    t = {
        "max_steps": 24,
        "seq_len": SEQ_LEN,
        "batch_size": 8,
        "micro_batch_size": 2,
        "lr": 1e-3 if method == "full" else 1e-2,
        "warmup_steps": 2,
        "min_lr": 1e-4,
        "eval_interval": 8,
        "eval_batches": 4,
        "checkpoint_interval": 8,
        "seed": 3,
        **training,
    }
    return {
        "type": "dpo",
        "job_id": "job_dpo",
        "tokenizer_path": base["tokenizer"],
        "data": {"format": "sft", "train": base["train"], "val": base["val"]},
        "sft": {"base_model_dir": base["export"], "method": method, "packing": True},
        "dpo": {"beta": 0.1},
        "training": t,
        "resources": {"accelerator": "cpu", "strategy": "ddp"},
        "output_dir": str(tmp / "attempt-1"),
        "checkpoint_dir": str(tmp / "checkpoints"),
        "export_dir": str(tmp / "attempt-1" / "export"),
        "keep_checkpoints": 2,
    }


def test_pairs_are_written_chosen_then_rejected_with_only_the_answer_learned(
    tmp_path: Path, base: dict[str, str]
) -> None:
    record = preference_records(1, 5)[0]
    record["input"]["messages"][:0] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},  # an earlier turn: not learned
    ]
    index = write_sft_shards(
        [record], base["tokenizer"], str(tmp_path / "s"), seq_len=256, kind="dpo"
    )
    assert index["kind"] == "dpo" and index["examples"] == 2
    ex = SFTExamples(str(tmp_path / "s"), 256, "train")
    tok = tokmod.load(base["tokenizer"])
    for i, side in enumerate(("preferred_output", "non_preferred_output")):
        ids, mask = ex.example(i)
        answer = record[side][0]["content"]
        learned = tok.decode([int(t) for t in ids[mask]], skip_special_tokens=False)
        assert learned == answer + tokmod.IM_END
        assert tok.decode(ids.tolist(), skip_special_tokens=False) == chat.render(
            [*record["input"]["messages"], record[side][0]]
        )


def test_overlong_pairs_are_truncated_to_fit_together_or_dropped(
    tmp_path: Path, base: dict[str, str]
) -> None:
    long = {
        "input": {"messages": [{"role": "user", "content": "Say: a"}]},
        "preferred_output": [{"role": "assistant", "content": "yes " * 20}],
        "non_preferred_output": [{"role": "assistant", "content": "no"}],
    }
    cut = write_sft_shards([long], base["tokenizer"], str(tmp_path / "t"), seq_len=64, kind="dpo")
    assert cut["truncated"] == 1 and cut["examples"] == 2
    write_sft_shards([long], base["tokenizer"], str(tmp_path / "f"), seq_len=256, kind="dpo")
    full = np.diff(np.load(tmp_path / "f" / "offsets.npy"))
    lengths = np.diff(np.load(tmp_path / "t" / "offsets.npy"))
    assert full.sum() > 64 and full[1] < 32
    assert lengths.tolist() == [64 - full[1], full[1]]  # the short answer is kept whole
    with pytest.raises(ValueError, match=r"no usable DPO examples .*1 longer than seq_len 64"):
        write_sft_shards(
            [long], base["tokenizer"], str(tmp_path / "d"), seq_len=64, overlong="drop", kind="dpo"
        )


def test_sft_shards_are_refused_as_pairs(tmp_path: Path, base: dict[str, str]) -> None:
    records = [{"prompt": "Say: a", "completion": "a"}] * 4
    write_sft_shards(records, base["tokenizer"], str(tmp_path / "sft"), seq_len=SEQ_LEN)
    with pytest.raises(ValueError, match="not written as preference pairs"):
        DPOData(
            str(tmp_path / "sft"),
            None,
            SEQ_LEN,
            packing=True,
            seed=0,
            rank=0,
            world_size=1,
            device=torch.device("cpu"),
        )


def _direct_loss(task: DPOTask, examples: SFTExamples, pairs: list[int]) -> float:
    """The mean DPO loss of these pairs, each sequence run alone through both models."""

    def logp(model: torch.nn.Module, i: int) -> float:
        ids, mask = examples.example(i)
        x = torch.from_numpy(ids)[None]
        logits, _ = model(x)
        logps = F.log_softmax(logits.float()[0, :-1], dim=-1)
        picked = logps.gather(1, x[0, 1:, None])[:, 0]
        return float(picked[torch.from_numpy(mask[1:])].sum())

    beta, total = task.beta, 0.0
    for p in pairs:
        chosen = beta * (logp(task.model, 2 * p) - logp(task.reference, 2 * p))
        rejected = beta * (logp(task.model, 2 * p + 1) - logp(task.reference, 2 * p + 1))
        total += -math.log(1 / (1 + math.exp(-(chosen - rejected))))
    return total / len(pairs)


def test_loss_is_ln2_at_the_start_and_matches_a_direct_computation(
    tmp_path: Path, base: dict[str, str]
) -> None:
    raw = dpo_config(tmp_path, base, max_steps=4, eval_interval=100, checkpoint_interval=100)
    cfg = RunConfig.from_dict(raw)
    events = EventWriter(cfg.output_dir)
    try:
        trainer = Trainer(cfg, Dist(), events)
        task = trainer.task
        assert isinstance(task, DPOTask)
        batch = task.data.val_batches(8, 8)[0]
        assert isinstance(batch, DPOBatch) and task.data.val is not None
        with torch.no_grad():
            sums, pairs = task.val_terms(batch)
        start = sums / pairs
        assert abs(float(start[0]) - math.log(2)) < 1e-6  # policy == reference
        assert float(start[2]) == 0.5  # every pair a tie
        assert trainer.run() == EXIT_OK
        task.model.eval()
        with torch.no_grad():
            packed = float(task.val_terms(batch)[0][0]) / batch.pairs
            direct = _direct_loss(task, task.data.val, list(range(batch.pairs)))
    finally:
        events.close()
    # Each row holds one pair: its two sequences are separate documents of the row.
    assert batch.pairs == 8 and set(batch.seq_ids[0].tolist()) == {-1, 0, 1}
    assert abs(packed - direct) < 1e-4 and abs(direct - math.log(2)) > 1e-3
    steps = [e for e in read_events(raw["output_dir"]) if e["type"] == "step"]
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-4
    assert steps[0]["reward_accuracy"] == 0.5 and steps[0]["reward_margin"] == 0.0


def test_pair_sums_count_a_tie_as_half() -> None:
    policy = torch.tensor([-1.0, -2.0, -3.0, -3.0, -5.0, -1.0])
    reference = torch.tensor([-2.0, -2.0, -3.0, -3.0, -4.0, -4.0])
    sums = pair_sums(policy, reference, beta=0.5)
    margins = [0.5, 0.0, -0.5 - 1.5]
    assert sums[2].item() == 1.5
    assert sums[1].item() == pytest.approx(sum(margins))
    assert sums[0].item() == pytest.approx(sum(-math.log(1 / (1 + math.exp(-m))) for m in margins))


def test_sequence_logps_sum_each_sequence_apart() -> None:
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, -100, 3, -100]])
    seq_ids = torch.tensor([[0, 0, 1, -1]])
    out = sequence_logps(logits, labels, seq_ids, 2)
    logps = F.log_softmax(logits[0], dim=-1)
    assert torch.allclose(out, torch.stack([logps[0, 1], logps[2, 3]]))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_torchrun_two_processes_learns_the_preference(
    tmp_path: Path, base: dict[str, str], method: str
) -> None:
    raw = dpo_config(tmp_path, base, method)
    if method == "lora":
        raw["sft"]["lora"] = {"rank": 4, "alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"]}
    assert run_trainer(write_config(raw, tmp_path / "run.json"), nproc=2, timeout=300) == EXIT_OK
    events = read_events(raw["output_dir"])
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 25))
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-4
    assert {"reward_margin", "reward_chosen", "reward_rejected"} <= set(steps[-1])
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [8, 16, 24]
    assert evals[-1]["val_reward_accuracy"] >= 0.9, evals
    drop = 0.1 if method == "full" else 0.05
    assert evals[-1]["val_loss"] < math.log(2) - drop and evals[-1]["val_reward_margin"] > 0
    print({e["step"]: (round(e["val_loss"], 4), e["val_reward_accuracy"]) for e in evals})
    assert events[-1]["type"] == "done"
    assert (Path(events[-1]["export_dir"]) / "model.safetensors").exists()


def test_dpo_resume_is_exact(tmp_path: Path, base: dict[str, str]) -> None:
    kw: dict[str, Any] = {"max_steps": 6, "eval_interval": 100, "checkpoint_interval": 100}
    kw["dropout"] = 0.1
    straight = dpo_config(tmp_path / "a", base, **kw)
    resumed = dpo_config(tmp_path / "b", base, **kw)
    assert run_in_process(straight) == EXIT_OK
    assert run_in_process(resumed, stop_at_step=3) == EXIT_PREEMPTED
    assert run_in_process(resumed) == EXIT_OK
    losses = [
        {e["step"]: e["loss"] for e in read_events(raw["output_dir"]) if e["type"] == "step"}
        for raw in (straight, resumed)
    ]
    assert sorted(losses[1]) == list(range(1, 7)) and losses[0] == losses[1]


def test_dpo_under_fsdp_starts_at_ln2_and_finishes(tmp_path: Path, base: dict[str, str]) -> None:
    """The policy sharded over two processes, the reference held whole by each."""
    raw = dpo_config(tmp_path, base, max_steps=4, eval_interval=4, checkpoint_interval=4)
    raw["resources"]["strategy"] = "fsdp"
    assert run_trainer(write_config(raw, tmp_path / "run.json"), nproc=2, timeout=300) == EXIT_OK
    events = read_events(raw["output_dir"])
    start = next(e for e in events if e["type"] == "start")
    assert start["sharded"] is True
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    # The reference computes at the policy's precision (bf16 parameters when FSDP computes
    # in bf16): 1.9e-9 from ln 2 on an AVX512-BF16 processor, 1.1e-5 with an fp32 reference.
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-7
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [4] and 0 <= evals[0]["val_reward_accuracy"] <= 1
    assert events[-1]["type"] == "done"
