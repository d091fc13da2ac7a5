"""Data and tensor parallelism: DDP replicas, FSDP2 shards, tensor-parallel groups (see
trainer.tensor_parallel) and the two combined, and the state dicts each one saves."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.config import TENSOR_PARALLEL, ResourcesConfig
from trainer.distributed import Dist
from trainer.model import CausalLM


def computes_in_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run computes in bf16 (autocast, or FSDP's bf16 parameters; weights,
    optimizer state and the loss stay fp32). "auto" takes bf16 where the hardware multiplies
    it natively: CUDA devices that support it, and CPUs with AVX512-BF16 or AMX-BF16, where
    a step of the tiny Shakespeare model (128 wide) took 11 to 23 % less time than in fp32,
    and one 768 wide about half (attention stays fp32 there: trainer.model.causal_attention),
    at a validation loss within seed noise of fp32's (bench/RESULTS.md, "bf16 on the CPU",
    "bf16 attention on the CPU"); elsewhere bf16 would be emulated, slower than fp32, so
    "auto" is fp32.
    """
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        capabilities: Mapping[str, Any] = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


@dataclass(frozen=True)
class Layout:
    """How the ranks share the work: dp_size data-parallel groups (replicas, or FSDP
    shards of each other) of tp_size ranks that split every block between them.

    The ranks of one tensor-parallel group read the same batches: the data stream, the
    dropout seed and the share of the validation batches follow dp_rank, not the rank.
    """

    strategy: str
    dp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    fsdp: bool = False  # parameters sharded by fully_shard (fsdp, fsdp+tp)
    mesh: Any = None  # the ("dp", "tp") DeviceMesh under tensor parallelism

    @property
    def sharded(self) -> bool:
        """Whether parameters are DTensors: every forward is a collective, and
        checkpoints are written as distributed (DCP) shards."""
        return self.fsdp or self.mesh is not None


def layout(resources: ResourcesConfig, dist: Dist) -> Layout:
    """The layout of this run. Without a process group (a plain process) every strategy
    trains the whole model as one replica."""
    strategy = resources.strategy
    if not dist.has_group or strategy == "ddp":
        return Layout(strategy, dist.rank, dist.world_size)
    if strategy == "fsdp":
        return Layout(strategy, dist.rank, dist.world_size, fsdp=True)
    # DTensor is imported only here: over a second of start-up for every other run.
    from trainer.tensor_parallel import device_mesh

    size = resources.tensor_parallel_size or dist.local_world_size
    mesh = device_mesh(dist.device.type, dist.world_size, size)
    return Layout(
        strategy,
        dp_rank=mesh.get_local_rank("dp"),
        dp_size=mesh.size(0),
        tp_size=size,
        fsdp=strategy == "fsdp+tp",
        mesh=mesh,
    )


def _fully_shard(model: CausalLM, *, bf16: bool, compile: bool, mesh: Any = None) -> None:
    # FSDP and DTensor are imported only here: over a second of start-up for every other
    # run.
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # Each block is one all-gather unit; the root holds embeddings, final norm and head
    # (tied weights stay in one unit). bf16 compute with fp32 gradient reduction.
    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
    )
    for block in model.blocks():
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def wrap(
    model: CausalLM,
    *,
    strategy: str,
    dist: Dist,
    bf16: bool,
    compile: bool,
    layout: Layout | None = None,
) -> nn.Module:
    """The module to train: the model itself, DDP around it, or the model sharded in place.

    FSDP and tensor parallelism shard in place (the optimizer must be built afterwards,
    on the sharded parameters); DDP wraps, so an optimizer built before is still valid.
    Tensor parallelism needs the layout's mesh; FSDP on top of it shards over "dp".
    """
    if strategy in TENSOR_PARALLEL and layout is not None and layout.mesh is not None:
        from trainer.tensor_parallel import ReplicaGroup, parallelize

        parallelize(model, layout.mesh["tp"])
        if layout.fsdp:
            _fully_shard(model, bf16=bf16, compile=compile, mesh=layout.mesh["dp"])
            return model
        if compile:
            for block in model.blocks():
                block.compile()
        if layout.dp_size > 1:
            return ReplicaGroup(model, layout.mesh["dp"])
        return model
    if strategy == "fsdp" and dist.has_group:
        _fully_shard(model, bf16=bf16, compile=compile)
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
    replicas = _loaded_class("trainer.tensor_parallel", "ReplicaGroup")
    for i in range(n):
        last = i == n - 1
        if isinstance(model, DDP) and not last:
            yield model.no_sync()
        elif replicas is not None and isinstance(model, replicas) and last:
            yield model.averaging_gradients()  # type: ignore[operator]
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
    """Model and optimizer state keyed by parameter name, as this rank's DTensor shards
    (whole tensors for a model that is not sharded: a distributed checkpoint is read into
    any layout through these)."""
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


def has_dtensors(model: nn.Module) -> bool:
    """Whether any parameter is a DTensor (FSDP or tensor parallelism)."""
    dtensor = _loaded_class("torch.distributed.tensor", "DTensor")
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """Unsharded weights on the CPU of rank 0 (a collective when parameters are
    DTensors, under FSDP or tensor parallelism; empty on the other ranks then)."""
    if not has_dtensors(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
