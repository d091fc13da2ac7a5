"""Shared helpers for the trainer tests: a tiny corpus, its shards and run.json files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from trainer import shards
from trainer import tokenizer as tokmod
from trainer.config import PRESETS, RunConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.loop import Trainer

REPO = Path(__file__).resolve().parents[2]

_WORD_LIST = (
    "the a an of to and in is was for on that with as by at from his her they we you it "
    "river stone light garden winter morning city road house window song bread letter "
    "walks sings reads opens keeps finds carries hears makes remembers "
    "quiet bright old small green slow warm distant"
)
WORDS = _WORD_LIST.split()


def corpus(n_docs: int = 200, seed: int = 0) -> list[str]:
    """Random-ish English documents from a small word list."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(2, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    return docs


def make_dataset(tmp: Path, n_docs: int = 200) -> tuple[str, dict[str, Any]]:
    """Byte tokenizer + shards under tmp; returns (tokenizer_path, run.json data section)."""
    tok_path = tmp / "tokenizers" / "byte" / "tokenizer.json"
    tok_path.parent.mkdir(parents=True)
    tokmod.byte_tokenizer().save(str(tok_path))
    out = tmp / "tokens"
    index = shards.write_shards(
        corpus(n_docs), str(tok_path), str(out), append_eot=True, shard_tokens=20_000
    )
    train, val = shards.split_ranges(index, str(out), 0.1)
    return str(tok_path), {
        "dtype": index["dtype"],
        "eot_id": index["eot_id"],
        "train": train,
        "val": val,
    }


def run_config(
    tmp: Path, name: str, tok_path: str, data: dict[str, Any], preset: str = "tiny", **training: Any
) -> dict[str, Any]:
    """A run.json dict for the tiny model writing under tmp/name."""
    base = tmp / name
    t = {
        "max_steps": 30,
        "seq_len": 32,
        "batch_size": 8,
        "micro_batch_size": 4,
        "lr": 3e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 5,
        "min_lr": 3e-4,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "dropout": 0.0,
        "eval_interval": 10,
        "eval_batches": 4,
        "checkpoint_interval": 10,
        "seed": 1337,
        "precision": "auto",
        "compile": False,
    }
    t.update(training)
    return {
        "job_id": f"job_{name}",
        "attempt": 1,
        "model": {**PRESETS[preset](), "vocab_size": 257, "seq_len": 32, "dropout": 0.0},
        "tokenizer_path": tok_path,
        "data": data,
        "training": t,
        "resources": {"accelerator": "cpu", "strategy": "ddp"},
        "output_dir": str(base / "attempt-1"),
        "checkpoint_dir": str(base / "checkpoints"),
        "export_dir": str(base / "attempt-1" / "export"),
        "keep_checkpoints": 2,
    }


def write_config(cfg: dict[str, Any], path: Path) -> str:
    """Write cfg as JSON and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return str(path)


def trainer_cmd(config_path: str, nproc: int = 1) -> list[str]:
    """The command line that runs the trainer, under torchrun when nproc > 1."""
    if nproc == 1:
        return [sys.executable, "-m", "trainer.train", "--config", config_path]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "trainer.train",
        "--config",
        config_path,
    ]


def env() -> dict[str, str]:
    """Environment for trainer subprocesses: repo importable, one thread per process."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_trainer(config_path: str, nproc: int = 1, timeout: float = 120) -> int:
    """Run the trainer to completion and return its exit code."""
    proc = subprocess.run(
        trainer_cmd(config_path, nproc),
        cwd=REPO,
        env=env(),
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1, 75):
        print(proc.stdout, proc.stderr)
    return proc.returncode


def run_in_process(raw: dict[str, Any], stop_at_step: int | None = None) -> int:
    """Run the trainer on a run.json dict in this process; its exit code."""
    cfg = RunConfig.from_dict(raw)
    events = EventWriter(cfg.output_dir)
    try:
        return Trainer(cfg, Dist(), events, stop_at_step=stop_at_step).run()
    finally:
        events.close()


def read_events(output_dir: str) -> list[dict[str, Any]]:
    """Parsed events.jsonl of a run."""
    with open(os.path.join(output_dir, "events.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run_dist_worker(*args: str) -> int:
    """Run tests.trainer.dist_worker under torchrun with 2 processes; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "tests.trainer.dist_worker", *args],
        cwd=REPO,
        env=env(),
        timeout=180,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr[-5000:])
    return proc.returncode
