"""LoRA: low-rank adapters on chosen nn.Linear layers, and merging them back for export.

A wrapped layer computes base(x) + (alpha / rank) * B(A(dropout(x))), with A (rank, in)
random and B (out, rank) zero, so training starts from exactly the base model. Targets
name modules by their last name component or a dotted suffix of the full name:

    llama  q_proj k_proj v_proj o_proj (default), gate_proj up_proj down_proj
    gpt2   attn.c_attn attn.c_proj (default), mlp.c_fc mlp.c_proj; plain "c_proj" means both

Our GPT-2 keeps its projections as nn.Linear (export transposes them into HF's Conv1D),
so the same wrapper serves both architectures.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DEFAULT_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
}


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout)
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        # Kaiming-uniform A as nn.Linear and PEFT do; zero B makes the update start at 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()  # (..., out)
        return self.base(x) + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """The update as a full (out, in) matrix: (alpha / rank) * B @ A."""
        return self.scaling * (self.lora_B @ self.lora_A)


def matches(name: str, targets: list[str]) -> bool:
    """Whether a module's full name ends with one of the targets at a name boundary."""
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
) -> list[str]:
    """Freeze the model and wrap every matching nn.Linear; return the wrapped names."""
    if rank < 1:
        raise ValueError("lora rank must be >= 1")
    model.requires_grad_(False)
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and matches(name, target_modules)
    ]
    if not found:
        raise ValueError(f"no nn.Linear module matches lora target_modules {target_modules}")
    tied = _tied_linears(model)
    for name in found:
        if name in tied:
            raise ValueError(f"cannot put LoRA on {name}: its weight is tied to an embedding")
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return found


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight and unwrap it; return how many were merged."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, m in wrapped:
        m.base.weight += m.delta_weight().to(m.base.weight.dtype)
        parent, child = _parent(model, name)
        setattr(parent, child, m.base)
    return len(wrapped)


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A LoRA model's full state dict with the adapters folded in, under plain layer names.

    Works on a gathered state dict, so it serves sharded models that cannot merge in place.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key.endswith((".lora_A", ".lora_B")):
            continue
        module, sep, leaf = key.rpartition(".base.")
        if not sep:
            out[key] = t
            continue
        if leaf == "weight":
            A, B = state[f"{module}.lora_A"], state[f"{module}.lora_B"]
            t = t + (scaling * (B.float() @ A.float())).to(t.dtype)
        out[f"{module}.{leaf}"] = t
    return out


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter matrices of every wrapped layer."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, child = name.rpartition(".")
    return (model.get_submodule(path) if path else model), child


def _tied_linears(model: nn.Module) -> set[str]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear))
    return {n for n, m in linears if id(m.weight) in embeddings}
