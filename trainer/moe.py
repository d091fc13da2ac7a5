"""Mixture of experts: a token-choice top-k router over SwiGLU experts, and its losses.

The layout mirrors Mixtral's `block_sparse_moe` (router `gate`, experts' w1/w3/w2), with
the experts stacked into 3D weights so all of them run as batched matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ModelConfig, MoEConfig
from trainer.distributed import Dist


class SparseMoE(nn.Module):
    """Each token goes to its top_k experts; their outputs are summed, weighted by the router.

    Dropless: every expert takes all tokens routed to it. The assignments are sorted by
    expert into a zero-padded (E, capacity, C) buffer, capacity being this batch's largest
    expert load, so the experts are three torch.bmm calls, whatever the number of experts.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.moe is not None
        self.num_experts, self.top_k = cfg.moe.num_experts, cfg.moe.top_k
        E, C, F_ = cfg.moe.num_experts, cfg.d_model, cfg.ff_dim
        self.gate = nn.Linear(C, E, bias=False)  # the router
        # Per expert the (out, in) weights of nn.Linear, as Mixtral stores them.
        self.w1 = nn.Parameter(torch.empty(E, F_, C))  # gate projection
        self.w3 = nn.Parameter(torch.empty(E, F_, C))  # up projection
        self.w2 = nn.Parameter(torch.empty(E, C, F_))  # down projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output (B, T, C) and the router's logits (B*T, E) for the losses."""
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        logits = self.gate(flat)  # (N, E)
        # As Mixtral: softmax over all experts in fp32, keep the top k, renormalise.
        probs = F.softmax(logits.float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k) each
        weights = weights / weights.sum(dim=-1, keepdim=True)

        expert_of = experts.reshape(-1)  # (N*k,) the expert of each assignment
        order = expert_of.argsort(stable=True)  # assignments grouped by expert
        sorted_expert = expert_of[order]
        counts = torch.bincount(expert_of, minlength=self.num_experts)  # (E,)
        starts = counts.cumsum(0) - counts
        slot = torch.arange(order.numel(), device=x.device) - starts[sorted_expert]
        token = order // self.top_k  # the token of each sorted assignment
        capacity = int(counts.max())  # one host sync: the buffer's size depends on it

        buf = flat.new_zeros(self.num_experts, capacity, C)  # (E, cap, C)
        buf[sorted_expert, slot] = flat[token]
        gate = torch.bmm(buf, self.w1.transpose(1, 2))  # (E, cap, F)
        up = torch.bmm(buf, self.w3.transpose(1, 2))
        out = torch.bmm(F.silu(gate) * up, self.w2.transpose(1, 2))  # (E, cap, C)
        y = out[sorted_expert, slot] * weights.reshape(-1)[order, None].to(out.dtype)
        combined = y.new_zeros(flat.shape[0], C).index_add_(0, token, y)  # (N, C)
        return combined.view(B, T, C).to(x.dtype), logits


@dataclass
class RouterStats:
    """The routers' losses and loads over the MoE layers of one forward pass."""

    aux_loss: torch.Tensor  # load-balancing loss, mean over layers (1.0 * top_k if balanced)
    z_loss: torch.Tensor  # router z-loss, mean over layers
    penalty: torch.Tensor  # what the training loss adds: the two, weighted by their coefs
    load: torch.Tensor  # (layers, E) share of the routed tokens each expert took; no grad


def router_stats(router_logits: list[torch.Tensor], moe: MoEConfig) -> RouterStats:
    """Load-balancing loss (Switch Transformer eq. 4), z-loss (ST-MoE eq. 5) and loads.

    Per layer, with f_e the share of tokens routed to expert e (counting each of a token's
    top_k choices, so the f_e add up to top_k, as in Mixtral) and P_e the mean router
    probability of e: aux = E * sum_e f_e * P_e, smallest when both are uniform. The
    z-loss is the mean squared log-sum-exp of the logits, which keeps them small.
    """
    aux, z, loads = [], [], []
    for logits in router_logits:  # (N, E) per MoE layer
        logits = logits.float()
        probs = F.softmax(logits, dim=-1)
        chosen = probs.topk(moe.top_k, dim=-1).indices  # (N, k)
        counts = F.one_hot(chosen, moe.num_experts).sum(dim=(0, 1)).float()  # (E,)
        f = counts / logits.shape[0]
        aux.append(moe.num_experts * (f * probs.mean(dim=0)).sum())
        z.append(torch.logsumexp(logits, dim=-1).pow(2).mean())
        loads.append(counts / counts.sum())
    aux_loss, z_loss = torch.stack(aux).mean(), torch.stack(z).mean()
    return RouterStats(
        aux_loss=aux_loss,
        z_loss=z_loss,
        penalty=moe.aux_loss_coef * aux_loss + moe.router_z_loss_coef * z_loss,
        load=torch.stack(loads).detach(),
    )


class RouterTally:
    """The routers' losses and loads summed over one optimizer step's micro-batches."""

    def __init__(self, moe_layers: list[int], dist: Dist) -> None:
        self.moe_layers, self.dist = moe_layers, dist
        self.sums: torch.Tensor | None = None
        self.count = 0

    def add(self, stats: RouterStats | None) -> torch.Tensor | None:
        """Note one forward pass's stats; return its penalty (None without experts)."""
        if stats is None:
            return None
        terms = [stats.aux_loss.detach().reshape(1), stats.z_loss.detach().reshape(1)]
        flat = torch.cat([*terms, stats.load.flatten()])
        self.sums = flat if self.sums is None else self.sums + flat
        self.count += 1
        return stats.penalty

    def metrics(self) -> dict[str, Any]:
        """The step's router losses and per-layer expert loads, averaged over all ranks (a
        collective), and start the next step; empty without experts."""
        if self.sums is None:
            return {}
        sums, count = self.sums, self.count
        self.sums, self.count = None, 0
        self.dist.all_reduce_sum(sums)
        mean = (sums / (count * self.dist.world_size)).tolist()
        layers = self.moe_layers
        experts = len(mean[2:]) // len(layers)
        loads = [mean[2 + i * experts : 2 + (i + 1) * experts] for i in range(len(layers))]
        return {
            "aux_loss": mean[0],
            "z_loss": mean[1],
            # Share of the routed tokens each expert took, per MoE layer (by block index).
            "expert_load": {str(layer): load for layer, load in zip(layers, loads, strict=True)},
        }
