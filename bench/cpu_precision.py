"""Where bf16 pays on this CPU: one training step in fp32 and under bf16 autocast, by width.

A gpt2 model (4 layers, heads of 32, byte vocabulary) takes full training steps (forward,
backward, fused AdamW) on random tokens in this process, on all the cores it is given,
as the trainer computes them: autocast to bf16 with fp32 weights, optimizer state and
loss, or plain fp32. The two precisions alternate, `--rounds` times, and the median
milliseconds per step of each is printed with the ratio bf16 / fp32 (below 1: bf16 faster).

    python bench/cpu_precision.py [--widths 128 256 512 768] [--ctx 64] [--batch 12]
        [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.model import build_model, configure_optimizer  # noqa: E402
from trainer.parallel import computes_in_bf16  # noqa: E402
from trainer.sizing import param_count  # noqa: E402


def model_config(width: int, ctx: int) -> ModelConfig:
    """The benchmark's gpt2: 4 layers, heads of 32, byte vocabulary."""
    return ModelConfig(
        arch="gpt2", n_layer=4, n_head=width // 32, d_model=width, vocab_size=257, seq_len=ctx
    )


def step_ms(width: int, ctx: int, batch: int, steps: int, bf16: bool) -> float:
    """Mean wall milliseconds of `steps` training steps after three warm-up steps."""
    torch.manual_seed(0)
    model = build_model(model_config(width, ctx))
    opt = configure_optimizer(
        model, lr=1e-3, weight_decay=0.1, device_type="cpu", betas=(0.9, 0.95)
    )
    x = torch.randint(0, 257, (batch, ctx))
    y = torch.randint(0, 257, (batch, ctx))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def one() -> None:
        with cast:
            _, loss = model(x, y)
        assert loss is not None
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 768])
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    auto = "bf16" if computes_in_bf16("auto", torch.device("cpu")) else "fp32"
    print(f"{datetime.now():%Y-%m-%d %H:%M}, {machine()}, torch {torch.__version__}")
    print(f"threads {torch.get_num_threads()}, precision auto here: {auto}")
    print(f"load before: {load()}")
    print("| width | params | fp32 ms/step | bf16 ms/step | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for width in a.widths:
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(a.rounds):
            for bf16 in (False, True):
                times[bf16].append(step_ms(width, a.ctx, a.batch, a.steps, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        params = param_count(model_config(width, a.ctx))
        print(
            f"| {width} | {params / 1e6:.2f}M | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} |",
            flush=True,
        )
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
