"""A plain, minimal GPT training loop in one file: the yardstick for trainer throughput.

Written the way single-file trainers are: model parts, a random-window batch function and
a bare loop with AdamW, cosine schedule and gradient clipping, fp32 on CPU. Same
architecture as trainyard's gpt2 arch (pre-norm blocks, fused q|k|v, tanh GELU, learned
positions, tied embeddings) so the two do the same arithmetic per step.

    python bench/reference_loop.py --data tokens.bin --steps 200 [--warmup 20]
        [--val-data val.bin --val-batches 200 --lr-warmup 100 --min-lr 1e-4]
        [--sampling random|epochs]

prints one JSON line: tokens/s over the steps after the warmup ones, the final loss, the
wall time of the whole loop (`train_s`, imports and set-up left out) and, with --val-data,
the mean loss over fixed validation windows (`val_windows`, shared with bench/shakespeare.py).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, -1).transpose(1, 2)
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_head)
        self.norm2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.out(F.gelu(self.fc(self.norm2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.tok(idx) + self.pos(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def get_batch(data: np.ndarray, batch: int, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (B, T) of inputs and next-token targets."""
    return windows(data, torch.randint(len(data) - ctx - 1, (batch,)).tolist(), ctx)


def epoch_starts(n_tokens: int, ctx: int) -> Iterator[int]:
    """Window starts in shuffled epochs of non-overlapping windows, each epoch's tiling
    shifted by a random offset: trainyard's pretraining order (trainer.data)."""
    while True:
        phase = int(torch.randint(ctx, ()))
        starts = torch.arange(phase, n_tokens - ctx, ctx)
        yield from starts[torch.randperm(len(starts))].tolist()


def windows(data: np.ndarray, ix: list[int], ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (B, T) of the windows starting at ix."""
    x = torch.stack([torch.from_numpy(data[i : i + ctx].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + ctx].astype(np.int64)) for i in ix])
    return x, y


def val_windows(
    data: np.ndarray, batches: int, batch: int, ctx: int, seed: int = 1234
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches: the same windows for every model that is scored on them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        ix = torch.randint(len(data) - ctx - 1, (batch,), generator=g).tolist()
        out.append(windows(data, ix, ctx))
    return out


def main() -> None:
    """Train for --steps steps and print tokens/s as JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="uint16 token file")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    p.add_argument("--vocab", type=int, default=257)
    p.add_argument("--ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-warmup", type=int, default=0, help="linear lr warmup steps")
    p.add_argument("--min-lr", type=float, default=0.0, help="where the cosine ends")
    p.add_argument("--val-data", help="uint16 token file to score the model on at the end")
    p.add_argument("--val-batches", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337, help="for the init and the batches")
    p.add_argument(
        "--sampling",
        choices=["random", "epochs"],
        default="random",
        help="random windows with replacement, or trainyard's shuffled epochs of tiles",
    )
    a = p.parse_args()

    torch.manual_seed(a.seed)
    data = np.memmap(a.data, dtype=np.uint16, mode="r")
    model = GPT(a.vocab, a.ctx, a.layers, a.heads, a.width)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=a.lr,
        betas=(0.9, 0.95),
    )
    order = epoch_starts(len(data), a.ctx) if a.sampling == "epochs" else None
    t_start = 0.0
    loss = torch.zeros(())
    t_loop = time.perf_counter()
    for step in range(1, a.steps + 1):
        if step == a.warmup + 1:
            t_start = time.perf_counter()
        if step <= a.lr_warmup:
            lr = a.lr * step / a.lr_warmup
        else:
            progress = (step - a.lr_warmup) / max(1, a.steps - a.lr_warmup)
            lr = a.min_lr + (a.lr - a.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = lr
        if order is None:
            x, y = get_batch(data, a.batch, a.ctx)
        else:
            x, y = windows(data, [next(order) for _ in range(a.batch)], a.ctx)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t_start
    train_s = time.perf_counter() - t_loop
    tokens = (a.steps - a.warmup) * a.batch * a.ctx
    out = {"tokens_per_s": tokens / elapsed, "loss": float(loss), "train_s": train_s}
    if a.val_data:
        val = np.memmap(a.val_data, dtype=np.uint16, mode="r")
        model.eval()
        held_out = val_windows(val, a.val_batches, a.batch, a.ctx)
        with torch.no_grad():
            losses = [float(model(x, y)) for x, y in held_out]
        out["val_loss"] = sum(losses) / len(losses)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
