"""Data parallelism: DDP replicas or FSDP2 shards, and the state dicts each one saves."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.distributed import Dist
from trainer.model import CausalLM


def wrap(model: CausalLM, *, strategy: str, dist: Dist, bf16: bool, compile: bool) -> nn.Module:
    """The module to train: the model itself, DDP around it, or the model sharded in place.

    FSDP shards in place (the optimizer must be built afterwards, on the sharded
    parameters); DDP wraps, so an optimizer built before is still valid.
    """
    if strategy == "fsdp" and dist.has_group:
        # FSDP and DTensor are imported only here: over a second of start-up for every
        # other run.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Each block is one all-gather unit; the root holds embeddings, final norm and head
        # (tied weights stay in one unit). bf16 compute with fp32 gradient reduction.
        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
        )
        for block in model.blocks():
            if compile:
                block.compile()
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    wrapped: nn.Module = model
    if compile:
        wrapped = torch.compile(model)  # type: ignore[assignment]
    if dist.is_distributed:
        dev = dist.device
        # Gradients as views into the all-reduce buckets: no second gradient-sized copy.
        wrapped = DDP(
            wrapped,
            device_ids=[dev.index] if dev.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
    return wrapped


def _loaded_class(module: str, name: str) -> type | None:
    """A class of a module if that module is loaded: nothing can be an instance of it
    otherwise, so a check need not import it."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name) if loaded is not None else None


def is_sharded(model: nn.Module) -> bool:
    """Whether the model is sharded by FSDP."""
    fsdp_module = _loaded_class("torch.distributed.fsdp", "FSDPModule")
    return fsdp_module is not None and isinstance(model, fsdp_module)


def micro_steps(model: nn.Module, n: int) -> Iterator[contextlib.AbstractContextManager[Any]]:
    """One context per micro-step; gradients are reduced across ranks only on the last."""
    for i in range(n):
        last = i == n - 1
        if isinstance(model, DDP) and not last:
            yield model.no_sync()
        else:
            if is_sharded(model):
                model.set_requires_gradient_sync(last)  # type: ignore[operator]
            yield contextlib.nullcontext()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a possibly distributed one (e.g. FSDP's global grad norm)."""
    dtensor = _loaded_class("torch.distributed.tensor", "DTensor")
    if dtensor is not None and isinstance(t, dtensor):
        return t.full_tensor()  # type: ignore[attr-defined]
    return t


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state keyed by parameter name, as this rank's DTensor shards."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optimizer": osd}


def load_sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Apply state dicts filled from a sharded checkpoint."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """Unsharded weights on the CPU of rank 0 (a collective under FSDP; empty on others)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
