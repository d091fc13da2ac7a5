"""Tiny Shakespeare from upload to model through the API, against a plain training loop.

The classic CPU setting of the single-file trainers: gpt2 arch, 4 layers, 4 heads, 128 wide,
context 64, batch 12, 2,000 steps, byte tokens, dropout 0, lr 1e-3 with 100 warmup steps
and cosine to 1e-4, weight decay 0.1, clip 1.0, last 10% of the text held out.

Side by side in one run: `bench/reference_loop.py` (its training loop alone is timed) and
trainyard on a Stack of its own (API, control loop, prep and node workers): the clock runs
from the start of the upload until the job shows its model. Both models are scored on the
same 200 fixed windows of the held-out bytes (`reference_loop.val_windows`), the exported
model loaded from its Hugging Face folder. The job's events break its time down.

    python bench/shakespeare.py [--steps 2000] [--rounds 1] [--compile] [--job-only]
        [--eval-interval 0 2000] [--processes 1] [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine, running_stack  # noqa: E402
from bench.reference_loop import val_windows  # noqa: E402
from trainyard.client import Client  # noqa: E402
from trainyard.storage import Storage  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # beside the project, never in it
LR, MIN_LR, WARMUP, CTX, BATCH = 1e-3, 1e-4, 100, 64, 12


def byte_splits(text: Path, tmp: Path) -> tuple[Path, Path]:
    """The text's bytes as uint16 token files: the first 90% to train, the rest to score."""
    data = np.frombuffer(text.read_bytes(), dtype=np.uint8).astype(np.uint16)
    cut = int(len(data) * 0.9)
    train, val = tmp / "train.bin", tmp / "val.bin"
    data[:cut].tofile(train)
    data[cut:].tofile(val)
    return train, val


def reference(train: Path, val: Path, steps: int, seed: int) -> dict[str, Any]:
    """The plain loop on the same budget: its own training time and its val loss."""
    args = ["--data", str(train), "--val-data", str(val), "--steps", str(steps)]
    args += ["--seed", str(seed)]
    args += ["--warmup", "0", "--lr", str(LR), "--lr-warmup", str(WARMUP), "--min-lr", str(MIN_LR)]
    # The plain loop runs as it would on its own: in this environment, with OpenMP's
    # defaults unless the caller set them (trainyard's ranks get the platform's).
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reference_loop.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(proc.stdout))


def spec(
    dataset_id: str,
    steps: int,
    compile: bool | None,
    seed: int,
    eval_interval: int | None,
    processes: int,
    precision: str | None = None,
) -> dict[str, Any]:
    """The JobSpec of the classic setting (eval_interval None: the platform's default), run
    as `processes` data-parallel ranks that split each batch of 12 windows."""
    training: dict[str, Any] = {
        "seed": seed,
        "max_steps": steps,
        "seq_len": CTX,
        "batch_size": BATCH,
        "micro_batch_size": BATCH // processes,
        "lr": LR,
        "warmup_steps": WARMUP,
        "min_lr": MIN_LR,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "dropout": 0.0,
    }
    if compile is not None:
        training["compile"] = compile
    if precision is not None:
        training["precision"] = precision
    if eval_interval is not None:
        training["eval_interval"] = eval_interval
    return {
        "dataset_id": dataset_id,
        "validation": {"fraction": 0.1},
        "tokenizer": {"type": "byte"},
        # The plain loop's model: GPT-2's blocks with every matrix initialised at 0.02 (not
        # GPT-2's smaller residual projections, which cost this 4-layer model 0.02 of val loss).
        "model": {
            "arch": "gpt2",
            "n_layer": 4,
            "n_head": 4,
            "d_model": 128,
            "scale_residual_init": False,
        },
        "training": training,
        "resources": {"processes_per_node": processes, "accelerator": "cpu"},
    }


def ts(value: str) -> float:
    """An RFC 3339 time as a Unix timestamp."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def phases(events: list[dict[str, Any]], t0: float, t_ds: float, t_end: float) -> dict[str, float]:
    """Where the job's wall time went, from the trainer's own event times."""
    out = {"upload + validate + tokenize": t_ds - t0}
    start = next(e for e in events if e["type"] == "start")
    out["submit -> trainer `start`"] = ts(start["time"]) - t_ds
    prev, kind = ts(start["time"]), "steps"
    sums: dict[str, float] = {"steps": 0.0, "evals": 0.0, "checkpoints": 0.0, "export": 0.0}
    first_step = None
    for e in events:
        t = ts(e["time"])
        if e["type"] == "step":
            kind = "steps"
            if first_step is None:
                first_step = t - prev
        elif e["type"] == "eval":
            kind = "evals"
        elif e["type"] == "checkpoint":
            kind = "checkpoints"
        elif e["type"] == "done":
            kind = "export"
        else:
            continue
        if t >= prev:
            sums[kind] += t - prev
            prev = t
    steps = [e for e in events if e["type"] == "step"]
    step_time = sum(e["step_time"] for e in steps)
    out["first step (compile, if on)"] = first_step or 0.0
    out["steps 2..N (wall between step events)"] = sums["steps"] - (first_step or 0.0)
    out["  of which inside the step (step_time)"] = step_time - steps[0]["step_time"]
    out["evaluations"] = sums["evals"]
    out["checkpoints"] = sums["checkpoints"]
    out["final export"] = sums["export"]
    out["`done` -> model shown by the API"] = t_end - prev
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_run(
    text: Path,
    val: Path,
    steps: int,
    compile: bool | None,
    seed: int,
    eval_interval: int | None,
    processes: int,
    precision: str | None = None,
) -> dict[str, Any]:
    """Upload, train and wait for the model on a fresh Stack; wall time, val loss, phases."""
    from trainer.sample import load_model

    with running_stack(
        node=True, node_slots=processes, extra_env={"TRAINYARD_FORK_SERVER": "true"}
    ) as stack:
        client = Client(stack.url, stack.new_key("bench-shakespeare"))
        time.sleep(5)  # the node worker's fork server imports torch once, at start
        t0 = time.time()
        ds = client.wait_dataset(client.upload_dataset(text, name="tinyshakespeare")["id"])
        t_ds = time.time()
        # What the API and the control process cost beside the trainer, while it trains.
        watched = {name: stack.procs[name].pid for name in ("api", "control")}
        cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
        job = client.create_job(
            spec(ds["id"], steps, compile, seed, eval_interval, processes, precision)
        )
        # Followed as `trainyard jobs watch` follows a job: its event stream, which ends
        # when the job does (polling at 10 Hz took 2 % of the steps' speed on 2 cores).
        for _ in client.jobs.stream(job["id"]):
            pass
        state = client.job(job["id"])
        t_end = time.time()
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in watched.items()}
        assert state["status"] == "succeeded", state
        folder = Storage(stack.workdir / "storage").attempt_dir(job["id"], 1)
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        start = next(e for e in events if e["type"] == "start")
        model = load_model(str(stack.workdir / "storage" / "models" / state["model_id"])).model
    data = np.memmap(val, dtype=np.uint16, mode="r")
    with torch.no_grad():
        losses = [float(model(x, y)[1]) for x, y in val_windows(data, 200, BATCH, CTX)]
    return {
        "wall_s": t_end - t0,
        "val_loss": sum(losses) / len(losses),
        "job_val_loss": state["progress"]["val_loss"],
        "phases": phases(events, t0, t_ds, t_end),
        "compile": start["compiled"],
        "precision": start["precision"],
        "cpu": cpu,
    }


def main() -> None:
    """Run both side by side and print wall times, val losses and the job's breakdown."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--text", type=Path, default=TEXT)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337, help="round r uses seed + r - 1 on both sides")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        help="the job's training.precision (default: the platform's, auto)",
    )
    p.add_argument("--job-only", action="store_true", help="skip the plain loop")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        choices=[1, 2, 3, 4, 6, 12],
        help="the job's processes on the node (data-parallel ranks that split the cores and "
        "each batch of 12); the plain loop is one process",
    )
    p.add_argument(
        "--eval-interval",
        type=int,
        nargs="+",
        default=[0],
        help="a job per value each round; 0: the platform's default (every 250 steps); "
        "the steps: once, at the end, as the plain loop evaluates",
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainyard-shakespeare-") as d:
        train, val = byte_splits(a.text, Path(d))
        for r in range(a.rounds):
            seed = a.seed + r
            print(f"round {r + 1}, seed {seed}, load before: {load()}", flush=True)
            if not a.job_only:
                ref = reference(train, val, a.steps, seed)
                print(
                    f"  plain loop: training {ref['train_s']:.1f} s, val loss "
                    f"{ref['val_loss']:.4f}; load {load()}",
                    flush=True,
                )
            for every in a.eval_interval:
                run = api_run(
                    a.text, val, a.steps, a.compile, seed, every or None, a.processes, a.precision
                )
                print(
                    f"  trainyard ({a.processes} processes, compile {run['compile']}, "
                    f"{run['precision']}, "
                    f"evaluating every {every or 'default'} steps): "
                    f"upload -> model {run['wall_s']:.1f} s, "
                    f"val loss {run['val_loss']:.4f} (the job's own: {run['job_val_loss']:.4f}); "
                    f"load {load()}",
                    flush=True,
                )
                for name, value in run["phases"].items():
                    print(f"    {name:<40} {value:7.2f} s")
                job_s = run["wall_s"] - run["phases"]["upload + validate + tokenize"]
                for name, value in run["cpu"].items():
                    share = value / job_s
                    label = f"CPU of the {name} process"
                    print(f"    {label:<40} {value:7.2f} s ({share:.1%} of a core)")
    print(f"machine: {machine()}; load after: {load()}")


if __name__ == "__main__":
    main()
