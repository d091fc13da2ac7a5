"""LoRA wrapping, freezing and merging, for both architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.lora import (
    DEFAULT_TARGETS,
    LoRALinear,
    apply_lora,
    lora_parameters,
    merge_lora,
    merged_state_dict,
)
from trainer.model import build_model

CFGS = {
    "gpt2": ModelConfig(arch="gpt2", n_layer=2, n_head=2, d_model=32, vocab_size=64, seq_len=16),
    "llama": ModelConfig(
        arch="llama", n_layer=2, n_head=4, d_model=32, vocab_size=64, seq_len=16, n_kv_head=2
    ),
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merge_folds_the_update_and_keeps_the_logits(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(CFGS[arch]).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = apply_lora(model, rank=4, alpha=8, dropout=0.0, target_modules=DEFAULT_TARGETS[arch])
    assert len(wrapped) == 2 * (2 if arch == "gpt2" else 4)  # per layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.endswith(("lora_A", "lora_B"))}
    assert len(trainable) == 2 * len(wrapped) == len(lora_parameters(model))
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(idx)[0], build_model_like(base, arch)(idx)[0])  # B starts at 0

    with torch.no_grad():  # as if trained: give every B a value
        for p in lora_parameters(model):
            p.normal_(std=0.1)
    adapters = {
        name: (m.lora_B.detach().clone(), m.lora_A.detach().clone())
        for name, m in model.named_modules()
        if isinstance(m, LoRALinear)
    }
    lora_logits = model(idx)[0]
    assert merge_lora(model) == len(wrapped)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    merged = model.state_dict()
    assert set(merged) == set(base)  # plain keys again: export needs nothing special
    for name, (B, A) in adapters.items():
        key = f"{name}.weight"
        assert (merged[key] - (base[key] + (8 / 4) * B @ A)).abs().max() < 1e-6
    assert (model(idx)[0] - lora_logits).abs().max() < 1e-5


def build_model_like(state: dict[str, torch.Tensor], arch: str) -> nn.Module:
    model = build_model(CFGS[arch]).eval()
    model.load_state_dict(state)
    return model


def test_lora_trains_only_adapters() -> None:
    torch.manual_seed(0)
    model = build_model(CFGS["llama"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, alpha=2, dropout=0.1, target_modules=["q_proj", "mlp.down_proj"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 64, (2, 16))
    for _ in range(3):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for key, value in before.items():
        for target in ("q_proj.", "down_proj."):
            key = key.replace(target, target + "base.")  # the frozen layer inside the wrapper
        assert torch.equal(after[key], value), key
    assert any(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))


def test_targets_must_match_and_tied_heads_are_refused() -> None:
    model = build_model(CFGS["gpt2"])
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        apply_lora(model, rank=2, alpha=2, dropout=0, target_modules=["x"])
    with pytest.raises(ValueError, match="tied"):
        apply_lora(model, rank=2, alpha=2, dropout=0, target_modules=["lm_head"])


def test_merged_state_dict_equals_merging_in_place() -> None:
    torch.manual_seed(0)
    model = build_model(CFGS["gpt2"]).eval()
    apply_lora(model, rank=2, alpha=6, dropout=0.0, target_modules=["c_attn", "mlp.c_fc"])
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(std=0.1)
    merged = merged_state_dict(model.state_dict(), 6 / 2)
    merge_lora(model)
    plain = model.state_dict()
    assert set(merged) == set(plain)
    for key, value in plain.items():
        assert torch.allclose(merged[key], value, atol=1e-6), key
