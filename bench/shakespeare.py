"""Quality at equal budget: val loss on tiny Shakespeare after 2000 steps of 12 x 64 bytes.

The classic single-file trainers reach a validation loss of about 1.88 with this budget
(4 layers, 4 heads, 128 wide, context 64, batch 12, dropout 0, byte-level). This runs the
trainer (`python -m trainer.train`, one process) on the same budget and reports the final
val loss (200 fixed batches of the last 10% of the text) and the wall time.

    python bench/shakespeare.py [--arch llama] [--lr 2e-3] [--steps 2000] ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine  # noqa: E402
from trainer import shards  # noqa: E402
from trainer import tokenizer as tokmod  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # beside the project, never in it


def main() -> None:
    """Prepare the byte shards, train, and print val loss and wall time."""
    p = argparse.ArgumentParser()
    p.add_argument("--text", default=str(TEXT))
    p.add_argument("--arch", default="llama", choices=["gpt2", "llama"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-interval", type=int, default=500)
    a = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="trainyard-shakespeare-") as d:
        tmp = Path(d)
        tok = tmp / "tokenizer.json"
        tokmod.byte_tokenizer().save(str(tok))
        # The whole play text is one document: no EOT inside the byte stream.
        text = Path(a.text).read_text(encoding="utf-8")
        index = shards.write_shards([text], str(tok), str(tmp / "tokens"), append_eot=False)
        train, val = shards.split_ranges(index, str(tmp / "tokens"), 0.1)
        cfg = {
            "model": {
                "arch": a.arch,
                "n_layer": 4,
                "n_head": 4,
                "d_model": 128,
                "vocab_size": index["vocab_size"],
                "seq_len": 64,
            },
            "tokenizer_path": str(tok),
            "data": {
                "dtype": index["dtype"],
                "eot_id": index["eot_id"],
                "train": train,
                "val": val,
            },
            "training": {
                "max_steps": a.steps,
                "seq_len": 64,
                "batch_size": 12,
                "micro_batch_size": 12,
                "lr": a.lr,
                "lr_schedule": a.schedule,
                "warmup_steps": a.warmup,
                "min_lr": a.min_lr,
                "weight_decay": a.weight_decay,
                "grad_clip": a.grad_clip,
                "dropout": 0.0,
                "eval_interval": a.eval_interval,
                "eval_batches": 200,
                "checkpoint_interval": a.steps,
            },
            "resources": {"accelerator": "cpu", "strategy": "ddp"},
            "output_dir": str(tmp / "out"),
            "checkpoint_dir": str(tmp / "ckpt"),
            "export_dir": str(tmp / "out" / "export"),
        }
        (tmp / "run.json").write_text(json.dumps(cfg))
        print(f"load before: {load()}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "trainer.train", "--config", str(tmp / "run.json")],
            cwd=ROOT,
            check=True,
        )
        wall = time.perf_counter() - t0
        events = [json.loads(x) for x in (tmp / "out" / "events.jsonl").read_text().splitlines()]
    evals = [(e["step"], round(e["val_loss"], 4)) for e in events if e["type"] == "eval"]
    print(f"machine: {machine()}; load after: {load()}")
    print(f"settings: {vars(a)}")
    print(f"val loss by step: {evals}")
    print(f"final val loss {evals[-1][1]:.4f} after {a.steps} steps; wall {wall:.0f} s")


if __name__ == "__main__":
    main()
