"""Run under torchrun by test_parallel.py and test_tensor_parallel.py: parity checks
between strategies, or a Trainer.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.trainer.dist_worker \
        parity OUT.json
    ... -m tests.trainer.dist_worker tp-parity OUT.json
    ... -m tests.trainer.dist_worker train RUN.json STOP_AT_STEP
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import parallel
from trainer.config import EXIT_PREEMPTED, PRESETS, ModelConfig, ResourcesConfig, RunConfig
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


# Tensor-parallel cases: (strategy, tensor_parallel_size, model). Sizes of 2 split each
# block over both ranks (mesh 1 x 2); sizes of 1 make two replicas (mesh 2 x 1).
GQA = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "d_ff": 96}
TP_CASES = {
    "tp2-tiny-llama": ("tp", 2, PRESETS["tiny-llama"]()),
    "tp2-gqa-untied": ("tp", 2, {**GQA, "tie_embeddings": False}),
    "fsdp+tp2-gqa": ("fsdp+tp", 2, GQA),
    "tp1-replicas": ("tp", 1, GQA),
    "fsdp+tp1-shards": ("fsdp+tp", 1, GQA),
}


def _tp_parity(dist: Dist, strategy: str, size: int, arch: dict[str, Any]) -> dict[str, Any]:
    """One tensor-parallel model against one process on the same global batch: logits,
    loss, every gradient and the clipped gradient norm."""
    cfg = ModelConfig(**arch, vocab_size=257, seq_len=32)
    torch.manual_seed(0)
    ref: CausalLM = build_model(cfg)
    model = copy.deepcopy(ref)
    resources = ResourcesConfig(
        strategy=strategy,  # type: ignore[arg-type]
        processes_per_node=dist.world_size,
        tensor_parallel_size=size,
    )
    layout = parallel.layout(resources, dist)
    wrapped = parallel.wrap(
        model, strategy=strategy, dist=dist, bf16=False, compile=False, layout=layout
    )

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (4, 32), generator=g)
    y = torch.randint(0, cfg.vocab_size, (4, 32), generator=g)
    # Each data-parallel group reads its share of the global batch of 4.
    rows = 4 // layout.dp_size
    mine = slice(rows * layout.dp_rank, rows * (layout.dp_rank + 1))
    # One process: gradient accumulation over the groups' shares.
    for part in range(layout.dp_size):
        _, loss = ref(x[rows * part : rows * (part + 1)], y[rows * part : rows * (part + 1)])
        assert loss is not None
        (loss / layout.dp_size).backward()
    with torch.no_grad():
        ref_logits, ref_loss = ref(x[mine], y[mine])
    assert ref_loss is not None
    for ctx in parallel.micro_steps(wrapped, 1):
        with ctx:
            logits, loss = wrapped(x[mine], y[mine])
            assert loss is not None
            loss.backward()
    ref_grads, grads = _grads(ref), _grads(model)
    grad_rel = max(_rel(grads[n], g) for n, g in ref_grads.items())  # before clipping
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    norm = parallel.local_tensor(torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 0.5))
    clipped = _grads(model)
    return {
        "mesh": [layout.dp_size, layout.tp_size],
        "dtensor_params": sum(
            isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()
        ),
        "params": len(list(model.parameters())),
        # What this rank holds of the parameters, for the memory estimate to be held to.
        "local_param_elements": sum(
            (p.to_local() if isinstance(p, torch.distributed.tensor.DTensor) else p).numel()
            for p in model.parameters()
        ),
        "grads": len(grads),
        "logits_abs": float((logits - ref_logits).detach().abs().max()),
        "loss_abs": abs(float(loss.detach()) - float(ref_loss)),
        "grad_rel": grad_rel,
        "clip_norm_abs": abs(float(norm) - float(ref_norm)),
        "clipped_grad_rel": max(_rel(clipped[n], g) for n, g in _grads(ref).items()),
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
        if argv[0] == "tp-parity":
            results = {name: _tp_parity(dist, *case) for name, case in TP_CASES.items()}
            if dist.is_main:
                with open(argv[1], "w", encoding="utf-8") as f:
                    json.dump(results, f)
            # Every rank's collectives done before the groups go: gloo threads still holding
            # work at teardown abort the process ("terminate called without an active
            # exception"), seen once in a full run.
            td.barrier()
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
