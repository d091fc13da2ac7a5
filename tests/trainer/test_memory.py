"""estimate_memory against what torch really allocates on the CPU."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import pytest
import torch

from trainer.config import PRESETS, ConfigError, ModelConfig, TrainingConfig
from trainer.model import build_model, configure_optimizer
from trainer.sizing import estimate_memory, fits

TRAINING = TrainingConfig(seq_len=32, batch_size=4, micro_batch_size=4, precision="fp32")


def _cfg(preset: str) -> ModelConfig:
    return ModelConfig(**PRESETS[preset](), vocab_size=257, seq_len=32)


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_weights_grads_and_adamw_within_10_percent(preset: str) -> None:
    cfg = _cfg(preset)
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = configure_optimizer(
        model, lr=1e-3, weight_decay=0.1, device_type="cpu", betas=(0.9, 0.95)
    )
    idx = torch.randint(0, cfg.vocab_size, (4, 32))
    _, loss = model(idx, idx)
    assert loss is not None
    loss.backward()
    opt.step()
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    actual = _nbytes(params) + _nbytes(grads) + _nbytes(states)

    est = estimate_memory(cfg, TRAINING, world_size=1, strategy="ddp", accelerator="cpu")
    predicted = est["parameters"] + est["gradients"] + est["optimizer"]
    assert abs(predicted - actual) / actual < 0.10, (predicted, actual)
    assert est["total"] == predicted + est["activations"]  # fp32 CPU: no copies, no reserve


def _saved_bytes(cfg: ModelConfig, bf16: bool) -> int:
    """Bytes autograd keeps for a forward pass of 4 x 32 tokens (bf16: under autocast),
    plus the logits' gradient, alive at the start of the backward, as the estimate has it."""
    model = build_model(cfg)
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Count each storage once: views (q, k, v of one fused projection) share one.
        if t.data_ptr() not in param_ptrs and t.is_floating_point():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, cfg.vocab_size, (4, 32))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        _, loss = model(idx, idx)
    assert loss is not None
    return sum(storages.values()) + 4 * 32 * cfg.vocab_size * 4


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_activations_match_saved_tensors(preset: str) -> None:
    cfg = _cfg(preset)
    measured = _saved_bytes(cfg, bf16=False)
    est = estimate_memory(cfg, TRAINING, world_size=1, strategy="ddp", accelerator="cpu")
    assert abs(est["activations"] - measured) / measured < 0.15, (est["activations"], measured)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_bf16_activations_on_a_cpu_match_saved_tensors(preset: str) -> None:
    """Under autocast a CPU keeps bf16 copies of the weights (working_weights) and, for
    attention, which runs in fp32 there, fp32 q, k, v and output."""
    cfg = _cfg(preset)
    measured = _saved_bytes(cfg, bf16=True)
    bf16 = dataclasses.replace(TRAINING, precision="bf16")
    est = estimate_memory(cfg, bf16, world_size=1, strategy="ddp", accelerator="cpu")
    predicted = est["activations"] + est["working_weights"]
    assert abs(predicted - measured) / measured < 0.08, (predicted, measured)


def test_sharding_checkpointing_and_gpu_terms() -> None:
    cfg = ModelConfig(**PRESETS["gpt2-small"](), vocab_size=50257, seq_len=1024)
    t = TrainingConfig(seq_len=1024, batch_size=32, micro_batch_size=8)
    ddp = estimate_memory(cfg, t, world_size=4, strategy="ddp", accelerator="gpu")
    fsdp = estimate_memory(cfg, t, world_size=4, strategy="fsdp", accelerator="gpu")
    assert fsdp["parameters"] * 4 == pytest.approx(ddp["parameters"], rel=1e-6)
    assert fsdp["optimizer"] == 2 * fsdp["parameters"] and fsdp["total"] < ddp["total"]
    assert ddp["overhead"] == 1 << 30 and ddp["working_weights"] > 0
    ckpt = estimate_memory(
        cfg, dataclasses.replace(t, activation_checkpointing=True), 4, "ddp", "gpu"
    )
    assert ckpt["activations"] == ddp["activations_checkpointing"]
    # The 50k-wide logits dominate at this size, and checkpointing does not touch them.
    assert ckpt["activations"] < 0.7 * ddp["activations"]
    # 124M parameters at 16 bytes is about 2 GB: fits an 80 GB H100, not a 2 GB card.
    assert fits(ddp, 80 * 10**9) and not fits(ddp, 2 * 10**9)


def test_compile_and_fsdp_change_the_activation_terms() -> None:
    """Compiled runs recompute pointwise activations; FSDP's bf16 weights halve the residual."""
    cfg = ModelConfig("llama", 4, 8, 256, vocab_size=1000, seq_len=128, d_ff=1024)
    t = TrainingConfig(seq_len=128, batch_size=4, micro_batch_size=4, precision="bf16")
    eager = estimate_memory(cfg, dataclasses.replace(t, compile=False), 1, "ddp", "gpu")
    compiled = estimate_memory(cfg, dataclasses.replace(t, compile=True), 1, "ddp", "gpu")
    assert estimate_memory(cfg, t, 1, "ddp", "gpu") == compiled  # the default compiles on GPU
    tokens, d, ff, layers = 4 * 128, 256, 1024, 4
    # Two of the four ff-wide tensors per block (SiLU output and the product) are not kept,
    # and the fused cross-entropy keeps bf16 logits (2V) instead of fp32 log-probs (4V),
    # as does the logits' gradient.
    head = tokens * 2 * 1000 * (4 - 2)
    assert eager["activations"] - compiled["activations"] == tokens * layers * 2 * ff * 2 + head
    fsdp = estimate_memory(cfg, dataclasses.replace(t, compile=False), 1, "fsdp", "gpu")
    # The llama residual terms (4d per block) are kept in bf16 rather than fp32.
    assert eager["activations"] - fsdp["activations"] == tokens * layers * 4 * d * 2
    # On the CPU nothing is compiled for the estimate's purposes: no change.
    cpu = estimate_memory(cfg, dataclasses.replace(t, compile=True), 1, "ddp", "cpu")
    assert cpu["activations"] == estimate_memory(cfg, t, 1, "ddp", "cpu")["activations"]


def test_tensor_parallel_divides_the_split_projections() -> None:
    """Attention and MLP projections and their activations are divided by the tensor-parallel
    size; embeddings, norms and the residual stream are not. fsdp+tp shards the rest over
    the data-parallel groups."""
    cfg = ModelConfig("llama", 4, 8, 256, vocab_size=1000, seq_len=128, d_ff=1024)
    t = TrainingConfig(seq_len=128, batch_size=8, micro_batch_size=4, precision="fp32")
    ddp = estimate_memory(cfg, t, 4, "ddp", "cpu")
    tp = estimate_memory(cfg, t, 4, "tp", "cpu", tensor_parallel_size=4)
    d, ff, layers, tokens = 256, 1024, 4, 4 * 128
    split = layers * (4 * d * d + 3 * d * ff)  # q, k, v, o and gate, up, down
    assert ddp["parameters"] - tp["parameters"] == 4 * (split - split // 4)
    per_token = layers * (5 * d + 4 * ff) * 4  # fp32 q, k, v, attention out, o input, MLP
    assert ddp["activations"] - tp["activations"] == tokens * (per_token - per_token // 4)
    both = estimate_memory(cfg, t, 8, "fsdp+tp", "cpu", tensor_parallel_size=4)
    assert both["parameters"] == tp["parameters"] // 2
    # A size of 1, or a strategy that does not split, is the plain estimate.
    assert estimate_memory(cfg, t, 4, "tp", "cpu", tensor_parallel_size=1) == ddp
    assert estimate_memory(cfg, t, 4, "ddp", "cpu", tensor_parallel_size=4) == ddp
    with pytest.raises(ConfigError, match=r"tensor_parallel_size \(3\) must divide world_size"):
        estimate_memory(cfg, t, 4, "tp", "cpu", tensor_parallel_size=3)


@pytest.mark.parametrize("micro_batch_size", [1, 64])
def test_auto_on_a_cpu_is_sized_for_the_larger_of_fp32_and_bf16(micro_batch_size: int) -> None:
    """A CPU node computes in bf16 or fp32 as its processor allows: the estimate is the
    precision that needs more. A sequence takes autocast's bf16 weight copies past what fp32
    activations cost; a large batch the other way."""
    cfg = ModelConfig("llama", 4, 8, 256, vocab_size=1000, seq_len=128, d_ff=1024)
    t = TrainingConfig(seq_len=128, batch_size=64, micro_batch_size=micro_batch_size)
    sized = {
        p: estimate_memory(cfg, dataclasses.replace(t, precision=p), 1, "ddp", "cpu")
        for p in ("auto", "fp32", "bf16")
    }
    larger = "bf16" if micro_batch_size == 1 else "fp32"
    assert sized[larger]["total"] > sized[{"bf16": "fp32", "fp32": "bf16"}[larger]]["total"]
    assert sized["auto"] == sized[larger]
