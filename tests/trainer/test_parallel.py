"""DDP, FSDP2 and one process agree; FSDP checkpoints resume exactly; checkpointing is free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.trainer_testkit import (
    REPO,
    env,
    make_dataset,
    read_events,
    run_config,
    run_dist_worker,
    run_in_process,
    run_trainer,
    write_config,
)
from trainer.config import EXIT_OK
from trainer.sample import load_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return make_dataset(tmp_path_factory.mktemp("data"))


def _losses(output_dir: str) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(output_dir) if e["type"] == "step"}


def test_ddp_fsdp_and_one_process_agree(tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    assert run_dist_worker("parity", str(out)) == 0
    for preset, r in json.loads(out.read_text()).items():
        assert r["grads"] > 0
        # DDP over 2 ranks == one process accumulating 2 micro-batches of the same batch.
        assert r["ddp_vs_single_grad_rel"] <= 1e-6, preset
        assert r["fsdp_vs_ddp_logits_abs"] <= 1e-5, preset
        assert r["fsdp_vs_ddp_loss_abs"] <= 1e-5, preset
        assert r["fsdp_vs_ddp_grad_rel"] <= 1e-5, preset


def test_fsdp_resume_matches_uninterrupted(tmp_path: Path, dataset: tuple[str, dict]) -> None:
    tok, data = dataset
    kw: dict[str, Any] = {
        "max_steps": 8,
        "micro_batch_size": 2,  # 8 = 2 x 2 ranks x 2 accumulation steps
        "eval_interval": 4,
        "checkpoint_interval": 4,
        "dropout": 0.1,  # the restored RNG matters too
        "activation_checkpointing": True,
    }
    straight = run_config(tmp_path, "straight", tok, data, **kw)
    resumed = run_config(tmp_path, "resumed", tok, data, **kw)
    for raw in (straight, resumed):
        raw["resources"]["strategy"] = "fsdp"
    assert run_trainer(write_config(straight, tmp_path / "a.json"), nproc=2) == EXIT_OK
    path = write_config(resumed, tmp_path / "b.json")
    assert run_dist_worker("train", path, "3") == 0
    assert read_events(resumed["output_dir"])[-1]["type"] == "preempted"
    step3 = Path(resumed["checkpoint_dir"]) / "step-00000003"
    assert (step3 / "sharded" / ".metadata").exists() and not (step3 / "model.pt").exists()
    assert run_trainer(path, nproc=2) == EXIT_OK

    a, b = _losses(straight["output_dir"]), _losses(resumed["output_dir"])
    assert sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    starts = [e for e in read_events(resumed["output_dir"]) if e["type"] == "start"]
    assert starts[1]["resumed_from"] == str(step3)
    done = read_events(straight["output_dir"])[-1]
    assert done["type"] == "done"
    loaded = load_model(done["export_dir"])  # gathered from the shards on rank 0
    assert loaded.config.n_layer == 2


def _train(raw: dict[str, Any]) -> dict[int, float]:
    assert run_in_process(raw) == EXIT_OK
    return _losses(raw["output_dir"])


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_activation_checkpointing_changes_nothing(
    tmp_path: Path, dataset: tuple[str, dict], preset: str
) -> None:
    tok, data = dataset
    kw: dict[str, Any] = {"preset": preset, "max_steps": 5, "dropout": 0.1, "eval_interval": 5}
    plain = _train(run_config(tmp_path, "plain", tok, data, **kw))
    ckpt = _train(run_config(tmp_path, "ckpt", tok, data, activation_checkpointing=True, **kw))
    assert ckpt == plain


def test_fsdp_shards_over_a_group_of_one(tmp_path: Path, dataset: tuple[str, dict]) -> None:
    """One process under torchrun with strategy fsdp runs the sharded code path."""
    tok, data = dataset
    raw = run_config(tmp_path, "one", tok, data, max_steps=4, checkpoint_interval=4)
    raw["resources"]["strategy"] = "fsdp"
    path = write_config(raw, tmp_path / "one.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    proc = subprocess.run(
        [*cmd, "-m", "trainer.train", "--config", path],
        cwd=REPO,
        env=env(),
        timeout=180,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    events = read_events(raw["output_dir"])
    start = next(e for e in events if e["type"] == "start")
    assert start["sharded"] is True and start["world_size"] == 1
    step4 = Path(raw["checkpoint_dir"]) / "step-00000004"
    assert (step4 / "sharded" / ".metadata").exists()
    assert events[-1]["type"] == "done"
    assert load_model(events[-1]["export_dir"]).config.n_layer == 2


def test_fsdp_without_torchrun_trains_unsharded(tmp_path: Path, dataset: tuple[str, dict]) -> None:
    """A plain process has no rendezvous to form a group: it trains as one process."""
    tok, data = dataset
    raw = run_config(tmp_path, "plain", tok, data, max_steps=2, checkpoint_interval=2)
    raw["resources"]["strategy"] = "fsdp"
    assert run_trainer(write_config(raw, tmp_path / "plain.json")) == EXIT_OK
    start = next(e for e in read_events(raw["output_dir"]) if e["type"] == "start")
    assert start["sharded"] is False
