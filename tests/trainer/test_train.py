"""End-to-end trainer runs: torchrun with two processes, exact resume, SIGTERM, NaN."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.trainer_testkit import (
    REPO,
    env,
    make_dataset,
    read_events,
    run_config,
    run_in_process,
    run_trainer,
    trainer_cmd,
    write_config,
)
from trainer import train
from trainer.config import EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, RunConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.loop import Trainer
from trainer.sample import generate, load_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("data")
    tok, data = make_dataset(tmp)
    return tmp, tok, data


def _steps(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in events if e["type"] == "step"}


def test_torchrun_two_processes(tmp_path: Path, dataset: tuple[Path, str, dict]) -> None:
    _, tok, data = dataset
    # 8 sequences per step = micro-batch 2 x 2 ranks x 2 accumulation steps.
    raw = run_config(tmp_path, "ddp", tok, data, max_steps=30, micro_batch_size=2)
    rc = run_trainer(write_config(raw, tmp_path / "run.json"), nproc=2)
    assert rc == EXIT_OK

    events = read_events(raw["output_dir"])
    start = events[0]
    assert start["type"] == "start" and start["world_size"] == 2 and start["step"] == 0
    assert start["resumed_from"] is None and start["params"] > 0
    steps = _steps(events)
    assert sorted(steps) == list(range(1, 31))
    assert steps[30]["tokens"] == 30 * 8 * 32
    first = sum(steps[i]["loss"] for i in range(1, 6)) / 5
    last = sum(steps[i]["loss"] for i in range(26, 31)) / 5
    assert last < first - 1.0, (first, last)
    assert [e["step"] for e in events if e["type"] == "eval"] == [10, 20, 30]
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [10, 20, 30]
    done = events[-1]
    assert done["type"] == "done" and done["step"] == 30 and done["val_loss"] < first
    assert all(e["time"].endswith("Z") for e in events)

    ckpt_dir = Path(raw["checkpoint_dir"])
    assert (ckpt_dir / "latest").read_text().strip() == "step-00000030"
    # keep_checkpoints=2; `best` names the lowest val_loss, which is kept besides them.
    best = (ckpt_dir / "best").read_text().strip()
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted(
        {"best", "latest", "step-00000020", "step-00000030", best}
    )
    assert {p.name for p in (ckpt_dir / "step-00000030").iterdir()} == {
        "model.pt",
        "optimizer.pt",
        "train_state.json",
        "rank-00000.pt",
        "rank-00001.pt",
    }

    loaded = load_model(done["export_dir"])
    text = generate(loaded, "The ", max_new_tokens=32, temperature=0.8, top_k=20, seed=0)
    assert isinstance(text, str) and len(text) > 0


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_resume_is_bit_exact(tmp_path: Path, dataset: tuple[Path, str, dict], preset: str) -> None:
    _, tok, data = dataset
    # Dropout on, so the restored torch RNG matters as much as the weights and sampler.
    kw: dict[str, Any] = {"preset": preset, "max_steps": 20, "dropout": 0.1}
    straight = run_config(tmp_path, "straight", tok, data, **kw)
    assert run_in_process(straight) == EXIT_OK

    resumed = run_config(tmp_path, "resumed", tok, data, **kw)
    assert run_in_process(resumed, stop_at_step=7) == EXIT_PREEMPTED
    assert run_in_process(resumed) == EXIT_OK

    a = _steps(read_events(straight["output_dir"]))
    events_b = read_events(resumed["output_dir"])
    b = _steps(events_b)
    starts = [e for e in events_b if e["type"] == "start"]
    assert starts[1]["step"] == 7 and starts[1]["resumed_from"].endswith("step-00000007")
    assert sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        assert b[step]["loss"] == a[step]["loss"], step
        assert b[step]["grad_norm"] == a[step]["grad_norm"], step
        assert b[step]["tokens"] == a[step]["tokens"]


def test_a_checkpoint_of_the_random_window_sampler_resumes_at_its_step(
    tmp_path: Path, dataset: tuple[Path, str, dict]
) -> None:
    """A checkpoint saved before the epoch stream (its sampler state a torch generator's)
    resumes at the place its step gives: the stream is one for every rank and world size."""
    _, tok, data = dataset
    kw: dict[str, Any] = {"max_steps": 12, "dropout": 0.1}
    straight = run_config(tmp_path, "straight", tok, data, **kw)
    assert run_in_process(straight) == EXIT_OK
    resumed = run_config(tmp_path, "resumed", tok, data, **kw)
    assert run_in_process(resumed, stop_at_step=5) == EXIT_PREEMPTED
    rank_file = Path(resumed["checkpoint_dir"]) / "step-00000005" / "rank-00000.pt"
    state = torch.load(rank_file, weights_only=True)
    state["data"] = {"generator": torch.Generator().get_state()}
    torch.save(state, rank_file)
    assert run_in_process(resumed) == EXIT_OK

    a = _steps(read_events(straight["output_dir"]))
    events = read_events(resumed["output_dir"])
    b = _steps(events)
    assert any("placed at step 5 of the data stream" in e.get("message", "") for e in events)
    assert [b[step]["loss"] for step in range(6, 13)] == [a[step]["loss"] for step in range(6, 13)]


def test_the_adam_betas_of_the_spec_are_the_optimizers(
    tmp_path: Path, dataset: tuple[Path, str, dict]
) -> None:
    _, tok, data = dataset
    raw = run_config(
        tmp_path, "betas", tok, data, max_steps=2, checkpoint_interval=2, adam_beta2=0.99
    )
    assert run_in_process(raw) == EXIT_OK
    saved = Path(raw["checkpoint_dir"]) / "step-00000002" / "optimizer.pt"
    groups = torch.load(saved, weights_only=True)["param_groups"]
    assert {tuple(g["betas"]) for g in groups} == {(0.9, 0.99)}


def test_sigterm_saves_checkpoint_and_exits_75(
    tmp_path: Path, dataset: tuple[Path, str, dict]
) -> None:
    _, tok, data = dataset
    raw = run_config(
        tmp_path, "term", tok, data, max_steps=5000, eval_interval=1000, checkpoint_interval=1000
    )
    path = write_config(raw, tmp_path / "run.json")
    events_path = Path(raw["output_dir"]) / "events.jsonl"
    proc = subprocess.Popen(trainer_cmd(path), cwd=REPO, env=env())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if events_path.exists() and '"step": 3,' in events_path.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == EXIT_PREEMPTED
    finally:
        if proc.poll() is None:
            proc.kill()

    events = read_events(raw["output_dir"])
    preempted = events[-1]
    assert preempted["type"] == "preempted"
    step = preempted["step"]
    assert 3 <= step < 5000
    assert preempted["checkpoint"] == os.path.join(raw["checkpoint_dir"], f"step-{step:08d}")
    latest = Path(raw["checkpoint_dir"]) / "latest"
    assert latest.read_text().strip() == f"step-{step:08d}"

    # The next attempt picks the checkpoint up by itself.
    assert run_in_process(raw, stop_at_step=step + 2) == EXIT_PREEMPTED
    start = [e for e in read_events(raw["output_dir"]) if e["type"] == "start"][-1]
    assert start["step"] == step and start["resumed_from"] == preempted["checkpoint"]


def test_nan_loss_fails_with_event(tmp_path: Path, dataset: tuple[Path, str, dict]) -> None:
    _, tok, data = dataset
    raw = run_config(
        tmp_path, "nan", tok, data, lr=1e30, min_lr=1e30, warmup_steps=0, grad_clip=0.0
    )
    assert train.main(["--config", write_config(raw, tmp_path / "run.json")]) == EXIT_FAILED
    error = read_events(raw["output_dir"])[-1]
    assert error["type"] == "error" and error["code"] == "nan_loss"
    assert error["step"] >= 2 and "loss" in error["message"]


def test_bad_batch_size_is_a_trainer_error(tmp_path: Path, dataset: tuple[Path, str, dict]) -> None:
    _, tok, data = dataset
    raw = run_config(tmp_path, "bad", tok, data, batch_size=10, micro_batch_size=4)
    assert train.main(["--config", write_config(raw, tmp_path / "run.json")]) == EXIT_FAILED
    error = read_events(raw["output_dir"])[-1]
    assert error["code"] == "trainer_error" and "multiple of micro_batch_size" in error["message"]


@pytest.mark.timeout(300)
def test_deterministic_compiled_runs_repeat_bit_for_bit(
    tmp_path: Path, dataset: tuple[Path, str, dict]
) -> None:
    """torch.compile sums some gradients (the embeddings') with atomic adds, in whatever
    order the threads reach them: two compiled runs part in the last bits (seen: 2.4e-7 on
    CPU; 1e-2 of loss after 200 steps on an H100). training.deterministic makes compile
    fall back to ordered sums, so separate processes repeat each other exactly."""
    _, tok, data = dataset
    kw: dict[str, Any] = {"max_steps": 20, "compile": True, "deterministic": True}
    runs = []
    for name in ("first", "second"):
        raw = run_config(tmp_path, name, tok, data, **kw)
        assert run_trainer(write_config(raw, tmp_path / f"{name}.json")) == EXIT_OK
        events = read_events(raw["output_dir"])
        start = events[0]
        assert start["compiled"] is True and start["deterministic"] is True
        runs.append(_steps(events))
    a, b = runs
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert b[step]["loss"] == a[step]["loss"], step
        assert b[step]["grad_norm"] == a[step]["grad_norm"], step


def test_the_validation_set_does_not_change_with_the_micro_batch_size(
    dataset: tuple[Path, str, dict[str, Any]],
) -> None:
    # Lowering micro_batch_size (the out-of-memory remedy) must leave val_loss comparable
    # with the run before: the same weights score the same 24 windows in 3, 12 or 5
    # micro-batches (of 5, the last one shorter, weighing what it holds).
    tmp, tok, data = dataset
    raw = run_config(
        tmp,
        "micro",
        tok,
        data,
        max_steps=10,
        batch_size=8,
        micro_batch_size=8,
        eval_batches=3,
        precision="fp32",
    )
    cfg = RunConfig.from_dict(raw)
    events = EventWriter(cfg.output_dir)
    losses = []
    try:
        trainer = Trainer(cfg, Dist(), events)
        assert trainer.run() == EXIT_OK  # 10 steps: away from the uniform start
        for micro in (8, 2, 5):
            trainer.cfg.training.micro_batch_size = micro
            trainer._evaluate()
            losses.append(trainer.val_loss)
    finally:
        events.close()
    assert all(loss is not None for loss in losses)
    assert max(losses) - min(losses) < 1e-6, losses
