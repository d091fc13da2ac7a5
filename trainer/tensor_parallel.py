"""Tensor parallelism of the llama blocks on a ("dp", "tp") device mesh, built on DTensor.

Within one tensor-parallel group every rank reads the same batch. Each block's q, k, v,
gate and up projections are split by output features (ColwiseParallel: each rank holds
whole attention heads and a slice of the MLP's hidden units) and o and down by input
features (RowwiseParallel, whose outputs are summed over the group), so a block costs one
all-reduce forward and one backward for attention and for the MLP (Megatron-LM's layout).
Embeddings, norms and the output head stay whole on every rank, as DTensors replicated
over the group, so that every parameter is a DTensor on one mesh: gradient clipping,
fused AdamW, FSDP on top ("fsdp+tp") and distributed checkpoints all see one kind of
tensor.

Imported only under tensor parallelism: DTensor adds over a second to start-up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as td
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from trainer.config import tensor_parallel_problem
from trainer.model import CausalLM, LlamaBlock


def device_mesh(device_type: str, world_size: int, tp_size: int) -> DeviceMesh:
    """The 2-D mesh: consecutive ranks (one node's processes under torchrun) form a
    tensor-parallel group; groups are data-parallel replicas or FSDP shards of each other."""
    if world_size % tp_size:
        raise ValueError(
            f"resources.tensor_parallel_size ({tp_size}) must divide the number of processes "
            f"({world_size})"
        )
    return init_device_mesh(
        device_type, (world_size // tp_size, tp_size), mesh_dim_names=("dp", "tp")
    )


def _as_replicated(module: nn.Module, inputs: tuple[Any, ...], mesh: DeviceMesh) -> tuple[Any, ...]:
    return tuple(
        DTensor.from_local(t, mesh, [Replicate()], run_check=False)
        if isinstance(t, torch.Tensor) and not isinstance(t, DTensor)
        else t
        for t in inputs
    )


def _as_local(module: nn.Module, output: Any, mesh: DeviceMesh) -> Any:
    return output.to_local() if isinstance(output, DTensor) else output


class Replicated(ParallelStyle):
    """A module kept whole on every rank of the group: its parameters become replicated
    DTensors, and its plain-tensor inputs and outputs stay plain tensors outside it.

    Every rank computes the same values and, because the split projections' input
    gradients are all-reduced, receives the same gradients: nothing is communicated.
    Parameters that are DTensors already (a tied weight met a second time) are kept.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        # The hooks return the inputs and outputs they replace (torch's stub says None).
        return distribute_module(
            module,
            device_mesh,
            None,
            _as_replicated,  # type: ignore[arg-type]
            _as_local,
        )


def _block_plan() -> dict[str, ParallelStyle]:
    return {
        "input_layernorm": Replicated(),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "post_attention_layernorm": Replicated(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }


def parallelize(model: CausalLM, tp_mesh: DeviceMesh) -> None:
    """Split a llama model over tp_mesh in place (every rank passes the same weights:
    rank 0's are the ones distributed)."""
    size = tp_mesh.size()
    problem = tensor_parallel_problem(model.cfg, size)
    if problem is not None:
        raise ValueError(problem[1])
    for block in model.blocks():
        assert isinstance(block, LlamaBlock)
        parallelize_module(block, tp_mesh, _block_plan())
        # Each rank now computes n_head / size query heads and n_kv_head / size kv heads
        # (consecutive ones, so grouped-query pairs stay on one rank).
        attn = block.self_attn
        attn.n_head //= size
        attn.n_kv_head //= size
    body = model.model
    parallelize_module(body, tp_mesh, {"embed_tokens": Replicated(), "norm": Replicated()})
    if model.cfg.tie_embeddings:
        model.lm_head.weight = body.embed_tokens.weight  # re-tie to the replicated tensor
    parallelize_module(model, tp_mesh, {"lm_head": Replicated()})


class ReplicaGroup(nn.Module):
    """A tensor-parallel model replicated over the mesh's "dp" dimension (strategy "tp"
    on more ranks than one group): what DDP does for a plain model, gradients averaged
    over the replicas once the last micro-step's backward is done."""

    def __init__(self, module: nn.Module, dp_mesh: DeviceMesh) -> None:
        super().__init__()
        self.module = module
        self.group = dp_mesh.get_group()
        self.replicas = dp_mesh.size()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def averaging_gradients(self) -> Iterator[None]:
        """Run the last micro-step's backward inside: gradients are averaged on exit."""
        yield
        self.average_gradients()

    @torch.no_grad()
    def average_gradients(self) -> None:
        """All-reduce this rank's gradient shards over the replicas, in one flat buffer."""
        grads = [
            p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            for p in self.module.parameters()
            if p.grad is not None
        ]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat, group=self.group)
        flat.div_(self.replicas)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
