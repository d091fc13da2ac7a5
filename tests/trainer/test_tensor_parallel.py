"""Tensor parallelism (tp, fsdp+tp) on two gloo processes agrees with one process; its
distributed checkpoints resume exactly and load into another layout; exports load in HF."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.dist_worker import TP_CASES
from tests.trainer.sft_testkit import make_sft_shards, pretrain_base, run_in_process
from tests.trainer.test_sft_train import PROMPTS, SEQ_LEN, sft_config
from tests.trainer.trainer_testkit import (
    make_dataset,
    read_events,
    run_config,
    run_dist_worker,
    run_trainer,
    write_config,
)
from trainer.config import EXIT_OK, ConfigError, ModelConfig, RunConfig, TrainingConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.export import from_hf_state_dict
from trainer.loop import Trainer
from trainer.sample import load_model
from trainer.sizing import estimate_memory

# 5 steps of a global batch of 8: 2 micro-batches of 4 on each data-parallel group. The
# layouts agree to 1e-5 in fp32 arithmetic, which the runs name: precision auto is bf16 on
# a CPU that multiplies it natively.
STEPS = {
    "max_steps": 5,
    "batch_size": 8,
    "micro_batch_size": 4,
    "eval_interval": 5,
    "precision": "fp32",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return make_dataset(tmp_path_factory.mktemp("data"))


def _config(
    tmp: Path, name: str, dataset: tuple[str, dict], strategy: str, **training: Any
) -> dict[str, Any]:
    tok, data = dataset
    raw = run_config(tmp, name, tok, data, preset="tiny-llama", **{**STEPS, **training})
    raw["resources"].update(strategy=strategy, processes_per_node=2)
    return raw


def _events(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return read_events(raw["output_dir"])


def _steps(raw: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in _events(raw) if e["type"] == "step"}


def _in_process(raw: dict[str, Any]) -> Trainer:
    """A Trainer of one plain process (no process group) for the given run.json."""
    cfg = RunConfig.from_dict(raw)
    return Trainer(cfg, Dist(), EventWriter(cfg.output_dir))


@pytest.fixture(scope="module")
def one_process(
    tmp_path_factory: pytest.TempPathFactory, dataset: tuple[str, dict]
) -> dict[str, Any]:
    """The reference: the same run in one process (DDP layout, no group)."""
    raw = _config(tmp_path_factory.mktemp("one"), "one", dataset, "ddp")
    raw["resources"]["processes_per_node"] = 1
    trainer = _in_process(raw)
    try:
        assert trainer.run() == EXIT_OK
    finally:
        trainer.events.close()
    return raw


# Recomputing the blocks in the backward pass changes no number: the tensor-parallel runs
# take that path too.
TP = {"activation_checkpointing": True}


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory: pytest.TempPathFactory, dataset: tuple[str, dict]) -> dict[str, Any]:
    """The same run split over 2 processes (mesh 1 x 2), tensor_parallel_size defaulted."""
    tmp = tmp_path_factory.mktemp("tp")
    raw = _config(tmp, "tp", dataset, "tp", **TP)
    assert run_trainer(write_config(raw, tmp / "tp.json"), nproc=2) == EXIT_OK
    return raw


def test_tp_model_matches_one_process(tmp_path: Path) -> None:
    """Logits, loss, gradients and the clipped norm of tp and fsdp+tp models, with the
    blocks split over 2 ranks and with 2 data-parallel replicas, against one process."""
    out = tmp_path / "tp-parity.json"
    assert run_dist_worker("tp-parity", str(out)) == 0
    results = json.loads(out.read_text())
    assert len(results) == 5
    for name, r in results.items():
        assert r["dtensor_params"] == r["params"] == r["grads"] > 0, name
        assert r["logits_abs"] <= 1e-5, name
        assert r["loss_abs"] <= 1e-5, name
        assert r["grad_rel"] <= 1e-5, name
        assert r["clip_norm_abs"] <= 1e-5, name
        assert r["clipped_grad_rel"] <= 1e-5, name
    assert results["tp2-tiny-llama"]["mesh"] == [1, 2]
    assert results["tp1-replicas"]["mesh"] == [2, 1]
    # The memory estimate's parameter bytes are what a rank holds (exactly, but for the
    # rows FSDP pads each parameter with to shard it evenly).
    training = TrainingConfig(seq_len=32, batch_size=4, micro_batch_size=2, precision="fp32")
    for name, (strategy, size, arch) in TP_CASES.items():
        cfg = ModelConfig(**arch, vocab_size=257, seq_len=32)
        est = estimate_memory(cfg, training, 2, strategy, "cpu", tensor_parallel_size=size)
        held = 4 * results[name]["local_param_elements"]
        exact = strategy == "tp"
        assert est["parameters"] == held if exact else abs(est["parameters"] - held) < held / 100


def test_tp_training_matches_one_process(
    one_process: dict[str, Any], tp_run: dict[str, Any]
) -> None:
    ref, tp = _steps(one_process), _steps(tp_run)
    assert sorted(tp) == list(range(1, 6))
    for step in range(1, 6):
        assert tp[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-5), step
        assert tp[step]["grad_norm"] == pytest.approx(ref[step]["grad_norm"], abs=1e-5), step
    evals = [
        [e["val_loss"] for e in _events(r) if e["type"] == "eval"] for r in (one_process, tp_run)
    ]
    assert evals[1] == pytest.approx(evals[0], abs=1e-5) and len(evals[1]) == 1
    start = next(e for e in _events(tp_run) if e["type"] == "start")
    assert start["world_size"] == 2 and start["tensor_parallel_size"] == 2
    assert start["sharded"] is True
    step5 = Path(tp_run["checkpoint_dir"]) / "step-00000005"
    assert (step5 / "sharded" / ".metadata").exists() and not (step5 / "model.pt").exists()


def test_tp_export_loads_in_transformers(
    one_process: dict[str, Any], tp_run: dict[str, Any]
) -> None:
    transformers = pytest.importorskip("transformers")
    export = _events(tp_run)[-1]["export_dir"]
    state = load_file(str(Path(export) / "model.safetensors"))
    # Whole tensors, gathered from both ranks' shards.
    assert state["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert state["model.layers.0.mlp.gate_proj.weight"].shape == (192, 64)
    hf = transformers.LlamaForCausalLM.from_pretrained(export).eval()
    ref = load_model(_events(one_process)[-1]["export_dir"]).model
    idx = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ref(idx)[0], atol=1e-4, rtol=1e-4)


def test_tp_checkpoint_resumes_in_one_process(tmp_path: Path, tp_run: dict[str, Any]) -> None:
    """The distributed checkpoint of the final step, read by one process under DDP: the
    same weights as the gathered export, the optimizer state too, the same val_loss."""
    raw = json.loads(json.dumps(tp_run))  # the same checkpoint_dir, its own output
    raw.update(output_dir=str(tmp_path / "out"), export_dir=str(tmp_path / "out" / "export"))
    raw["resources"].update(strategy="ddp", processes_per_node=1)
    trainer = _in_process(raw)
    try:
        assert trainer.step == 5 and trainer.resumed_from is not None
        assert not trainer.sharded
        cfg = trainer.model_cfg
        export = _events(tp_run)[-1]["export_dir"]
        exported = from_hf_state_dict(load_file(str(Path(export) / "model.safetensors")), cfg)
        weights = trainer.raw_model.state_dict()
        assert exported.keys() <= weights.keys()
        for key, value in exported.items():
            assert torch.equal(weights[key], value), key
        moments = [s["exp_avg"] for s in trainer.optimizer.state.values()]
        assert len(moments) == len(list(trainer.raw_model.parameters()))
        assert all(float(m.abs().sum()) > 0 for m in moments)
        final_val = [e["val_loss"] for e in _events(tp_run) if e["type"] == "eval"][-1]
        trainer._evaluate()
        assert trainer.val_loss == pytest.approx(final_val, abs=1e-6)
    finally:
        trainer.events.close()


def test_tp_resume_matches_uninterrupted(
    tmp_path: Path, dataset: tuple[str, dict], tp_run: dict[str, Any]
) -> None:
    """The run of tp_run preempted after step 3 and resumed from its distributed
    checkpoint: the same loss at every step as the run that went straight through."""
    resumed = _config(tmp_path, "resumed", dataset, "tp", **TP)
    path = write_config(resumed, tmp_path / "resumed.json")
    assert run_dist_worker("train", path, "3") == 0
    assert _events(resumed)[-1]["type"] == "preempted"
    step3 = Path(resumed["checkpoint_dir"]) / "step-00000003"
    assert (step3 / "sharded" / ".metadata").exists()
    assert run_trainer(path, nproc=2) == EXIT_OK

    a, b = _steps(tp_run), _steps(resumed)
    assert sorted(b) == list(range(1, 6))
    assert [b[s]["loss"] for s in b] == [a[s]["loss"] for s in b]
    assert [b[s]["grad_norm"] for s in b] == [a[s]["grad_norm"] for s in b]
    starts = [e for e in _events(resumed) if e["type"] == "start"]
    assert starts[1]["resumed_from"] == str(step3)
    assert _events(resumed)[-1]["val_loss"] == _events(tp_run)[-1]["val_loss"]


def test_fsdp_tp_training_matches_one_process(
    tmp_path: Path, dataset: tuple[str, dict], one_process: dict[str, Any]
) -> None:
    """fsdp+tp on 2 processes: tensor_parallel_size 2 (mesh 1 x 2), FSDP over a dp of 1."""
    raw = _config(tmp_path, "fsdp-tp", dataset, "fsdp+tp")
    raw["resources"]["tensor_parallel_size"] = 2
    assert run_trainer(write_config(raw, tmp_path / "c.json"), nproc=2) == EXIT_OK
    ref, got = _steps(one_process), _steps(raw)
    for step in range(1, 6):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-5), step
    done = _events(raw)[-1]
    assert done["type"] == "done"
    assert load_model(done["export_dir"]).config.n_layer == 2


def test_tp_without_a_group_trains_whole(tmp_path: Path, dataset: tuple[str, dict]) -> None:
    """A plain process has no rendezvous to form a mesh: it trains the whole model."""
    raw = _config(tmp_path, "plain", dataset, "tp", max_steps=1)
    raw["resources"]["processes_per_node"] = 1
    trainer = _in_process(raw)
    try:
        assert trainer.run() == EXIT_OK
    finally:
        trainer.events.close()
    start = next(e for e in _events(raw) if e["type"] == "start")
    assert start["sharded"] is False and start["tensor_parallel_size"] == 1


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            lambda c: c["model"].update(arch="gpt2"),
            r"model.arch 'gpt2' has no tensor-parallel plan",
        ),
        (
            lambda c: c["model"].update(n_head=4, n_kv_head=1),
            r"model.n_kv_head \(1\) must be divisible by resources.tensor_parallel_size \(2\)",
        ),
        (
            lambda c: c["model"].update(d_ff=99),
            r"model.d_ff \(99\) must be divisible by resources.tensor_parallel_size \(2\)",
        ),
        (
            lambda c: c["model"].update(moe={"num_experts": 4}),
            r"mixture of experts \(model.moe\) cannot be split",
        ),
        (
            lambda c: c["resources"].update(tensor_parallel_size=4),
            r"tensor_parallel_size \(4\) must divide the number of processes",
        ),
        (
            lambda c: c["resources"].update(strategy="fsdp", tensor_parallel_size=2),
            r"tensor_parallel_size \(2\) needs resources.strategy 'tp' or 'fsdp\+tp'",
        ),
        (lambda c: c["resources"].update(strategy="pp"), r"strategy: .*got 'pp'"),
    ],
)
def test_run_config_rejects_what_cannot_be_split(
    tmp_path: Path, dataset: tuple[str, dict], patch: Any, message: str
) -> None:
    raw = _config(tmp_path, "bad", dataset, "tp")
    patch(raw)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw)


def test_sft_under_tp_matches_one_process(tmp_path: Path) -> None:
    """Fine-tuning a llama base split over 2 processes: the same losses, validation loss
    and greedy chat samples (decoded with each rank's share of the kv heads cached)."""
    export = pretrain_base(tmp_path / "base", "tiny-llama", SEQ_LEN)
    train, val, tok = make_sft_shards(tmp_path / "base", f"{export}/tokenizer.json", SEQ_LEN)
    base = {"export": export, "train": train, "val": val, "tokenizer": tok}
    kw = {"max_steps": 4, "eval_interval": 4, "checkpoint_interval": 4, "precision": "fp32"}
    one = sft_config(tmp_path / "one", base, "full", **kw)
    assert run_in_process(one) == EXIT_OK
    tp = sft_config(tmp_path / "tp", base, "full", **kw)
    tp["resources"].update(strategy="tp", processes_per_node=2)
    assert run_trainer(write_config(tp, tmp_path / "tp.json"), nproc=2, timeout=300) == EXIT_OK

    def outcome(raw: dict[str, Any]) -> tuple[list[float], list[float], list[str]]:
        events = _events(raw)
        assert events[-1]["type"] == "done"
        return (
            [e["loss"] for e in events if e["type"] == "step"],
            [e["val_loss"] for e in events if e["type"] == "eval"],
            [e["completion"] for e in events if e["type"] == "sample"],
        )

    (ref_loss, ref_val, ref_samples), (loss, val_loss, samples) = outcome(one), outcome(tp)
    assert len(loss) == 4 and loss == pytest.approx(ref_loss, abs=1e-5)
    assert val_loss == pytest.approx(ref_val, abs=1e-5)
    assert len(samples) == len(PROMPTS) and samples == ref_samples
