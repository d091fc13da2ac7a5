"""Run under torchrun by test_parallel.py: parity checks between strategies, or a Trainer.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.trainer.dist_worker \
        parity OUT.json
    ... -m tests.trainer.dist_worker train RUN.json STOP_AT_STEP
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import parallel
from trainer.config import EXIT_PREEMPTED, PRESETS, ModelConfig, RunConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.loop import Trainer
from trainer.model import CausalLM, build_model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: parallel.local_tensor(p.grad) for n, p in model.named_parameters() if p.grad is not None
    }


def _parity(dist: Dist, preset: str) -> dict[str, Any]:
    cfg = ModelConfig(**PRESETS[preset](), vocab_size=257, seq_len=32)
    torch.manual_seed(0)
    ref: CausalLM = build_model(cfg)
    ddp_model = DDP(copy.deepcopy(ref))
    fsdp_model = copy.deepcopy(ref)
    parallel.wrap(fsdp_model, strategy="fsdp", dist=dist, bf16=False, compile=False)

    # One global batch of 4 sequences, the same on every rank; rank r owns rows 2r, 2r+1.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (4, 32), generator=g)
    y = torch.randint(0, cfg.vocab_size, (4, 32), generator=g)
    mine = slice(2 * dist.rank, 2 * dist.rank + 2)

    # One process, gradient accumulation over two micro-batches of 2.
    for part in (slice(0, 2), slice(2, 4)):
        _, loss = ref(x[part], y[part])
        assert loss is not None
        (loss / 2).backward()
    ddp_logits, ddp_loss = ddp_model(x[mine], y[mine])
    assert ddp_loss is not None
    ddp_loss.backward()
    fsdp_logits, fsdp_loss = fsdp_model(x[mine], y[mine])
    assert fsdp_loss is not None
    fsdp_loss.backward()

    ref_grads, ddp_grads = _grads(ref), _grads(ddp_model.module)
    fsdp_grads = _grads(fsdp_model)
    return {
        "ddp_vs_single_grad_rel": max(_rel(ddp_grads[n], g) for n, g in ref_grads.items()),
        "fsdp_vs_ddp_logits_abs": float((fsdp_logits - ddp_logits).detach().abs().max()),
        "fsdp_vs_ddp_loss_abs": abs(float(fsdp_loss) - float(ddp_loss)),
        "fsdp_vs_ddp_grad_rel": max(_rel(fsdp_grads[n], g) for n, g in ddp_grads.items()),
        "grads": len(ref_grads),
    }


def main(argv: list[str]) -> int:
    """Dispatch on the mode in argv[0]."""
    dist = Dist.init("cpu")
    try:
        if argv[0] == "parity":
            results = {p: _parity(dist, p) for p in ("tiny", "tiny-llama", "tiny-moe")}
            if dist.is_main:
                with open(argv[1], "w", encoding="utf-8") as f:
                    json.dump(results, f)
            return 0
        cfg = RunConfig.load(argv[1])
        events = EventWriter(cfg.output_dir, enabled=dist.is_main)
        try:
            # torchrun reports any non-zero rank exit as a failure, so a preemption (75)
            # is reported through events.jsonl and the worker exits 0.
            code = Trainer(cfg, dist, events, stop_at_step=int(argv[2])).run()
            return 0 if code == EXIT_PREEMPTED else code
        finally:
            events.close()
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
