"""Trainer throughput against a plain single-file loop on the same model and batch (CPU).

Both run as fresh subprocesses on a synthetic token shard, alternately, several rounds;
the median tokens/s of each is reported with the ratio trainyard / reference. The trainer
runs with training.compile on (--eager turns it off) at the platform's default precision
(bf16 on a CPU that multiplies it natively, else fp32); the reference is plain eager fp32.
With --processes N the trainer runs as N data-parallel ranks under torchrun (gloo), each
taking 12 / N windows of every batch of 12 and cpu_count / N threads, as a node runs them.

    python bench/trainer_throughput.py [--steps 300] [--rounds 3] [--eager] [--processes 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine, wait_quiet  # noqa: E402
from trainer import tokenizer as tokmod  # noqa: E402

MODEL = {"arch": "gpt2", "n_layer": 4, "n_head": 4, "d_model": 128, "vocab_size": 257}
CTX, BATCH = 64, 12


def run_json(
    tmp: Path, shard: Path, n_tokens: int, steps: int, compile: bool = True, processes: int = 1
) -> Path:
    """A run.json for the benchmark model on the synthetic shard, for `processes` ranks."""
    tok = tmp / "tokenizer.json"
    tokmod.byte_tokenizer().save(str(tok))
    split = n_tokens - 50_000
    cfg = {
        "model": {**MODEL, "seq_len": CTX},
        "tokenizer_path": str(tok),
        "data": {
            "dtype": "uint16",
            "eot_id": 256,
            "train": [{"path": str(shard), "start": 0, "end": split}],
            "val": [{"path": str(shard), "start": split, "end": n_tokens}],
        },
        "training": {
            "max_steps": steps,
            "seq_len": CTX,
            "batch_size": BATCH,
            "micro_batch_size": BATCH // processes,
            "lr": 1e-3,
            "warmup_steps": 0,
            "eval_interval": steps,
            "eval_batches": 1,
            "checkpoint_interval": steps,
            # Inductor fuses the elementwise work around the matmuls; it compiles during
            # the first step, which the warmup steps keep out of the timing.
            "compile": compile,
        },
        "resources": {"accelerator": "cpu", "strategy": "ddp"},
        "output_dir": str(tmp / "out"),
        "checkpoint_dir": str(tmp / "ckpt"),
        "export_dir": str(tmp / "out" / "export"),
    }
    path = tmp / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def trainer_tokens_per_s(
    config: Path, steps: int, warmup: int, env: dict[str, str] | None = None, processes: int = 1
) -> float:
    """Run `python -m trainer.train` (in `env`, else this environment; under torchrun for
    several processes) and time steps warmup+1..steps from its events."""
    out = Path(json.loads(config.read_text())["output_dir"])
    for leftover in (out / "events.jsonl", config.parent / "ckpt"):
        subprocess.run(["rm", "-rf", str(leftover)], check=True)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    subprocess.run(
        [*launcher, "-m", "trainer.train", "--config", str(config)],
        cwd=ROOT,
        env=env,
        check=True,
    )
    times = {}
    for line in (out / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "step":
            times[e["step"]] = datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
    elapsed = (times[steps] - times[warmup]).total_seconds()
    return (steps - warmup) * BATCH * CTX / elapsed


def reference_tokens_per_s(
    shard: Path, steps: int, warmup: int, env: dict[str, str] | None = None
) -> float:
    """Run bench/reference_loop.py on the same shard (in `env`, else this environment) and
    read its tokens/s."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "reference_loop.py"),
            *("--data", str(shard), "--steps", str(steps), "--warmup", str(warmup)),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(json.loads(proc.stdout)["tokens_per_s"])


def main() -> None:
    """Alternate both loops for --rounds rounds and print the medians and their ratio."""
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--eager", action="store_true", help="run the trainer without compile")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        choices=[1, 2, 3, 4, 6, 12],
        help="the trainer's data-parallel ranks (the reference is one process)",
    )
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainyard-tput-") as d:
        tmp = Path(d)
        n_tokens = 2_000_000
        shard = tmp / "tokens.bin"
        np.random.default_rng(0).integers(0, 256, n_tokens, dtype=np.uint16).tofile(shard)
        config = run_json(tmp, shard, n_tokens, a.steps, not a.eager, a.processes)
        print(f"load before: {wait_quiet()}", flush=True)
        ours, ref = [], []
        for r in range(a.rounds):
            ours.append(trainer_tokens_per_s(config, a.steps, a.warmup, None, a.processes))
            ref.append(reference_tokens_per_s(shard, a.steps, a.warmup))
            print(f"round {r + 1}: trainyard {ours[-1]:.0f} tok/s, reference {ref[-1]:.0f}")
        o, f = statistics.median(ours), statistics.median(ref)
        print(f"machine: {machine()}; load after: {load()}")
        print(f"trainyard {o:.0f} tok/s, reference {f:.0f} tok/s, ratio {o / f:.2f}")


if __name__ == "__main__":
    main()
