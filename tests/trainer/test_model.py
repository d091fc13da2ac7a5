"""Model, export and sampling: shapes, HF round trip, generation."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from trainer import tokenizer as tokmod
from trainer.config import ModelConfig
from trainer.export import export_model
from trainer.model import (
    IGNORE_INDEX,
    KVCache,
    build_model,
    causal_attention,
    configure_optimizer,
    cross_entropy,
    token_cross_entropy,
)
from trainer.sample import generate, load_model

CFGS = [
    ModelConfig(arch="gpt2", n_layer=2, n_head=2, d_model=64, vocab_size=257, seq_len=32),
    ModelConfig(
        arch="llama", n_layer=2, n_head=4, d_model=64, vocab_size=257, seq_len=32, n_kv_head=2
    ),
    ModelConfig(
        arch="llama",
        n_layer=1,
        n_head=2,
        d_model=32,
        vocab_size=257,
        seq_len=16,
        tie_embeddings=False,
    ),
]
IDS = ["gpt2", "llama-gqa", "llama-untied"]


@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_forward_shapes_and_initial_loss(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    targets = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, cfg.seq_len, cfg.vocab_size)
    assert loss is not None
    # Small init means near-uniform predictions at the start.
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.1
    assert model(idx[:, :5])[1] is None


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_residual_projections_start_smaller_unless_asked_not_to(arch: str) -> None:
    """GPT-2's init puts the projections into the residual stream at 0.02/sqrt(2L);
    scale_residual_init=False leaves them at 0.02 like every other matrix."""
    cfg = ModelConfig(arch, 8, 4, 256, vocab_size=300, seq_len=32)  # type: ignore[arg-type]
    projections = ("c_proj.weight", "o_proj.weight", "down_proj.weight")

    def stds(model: torch.nn.Module) -> tuple[float, float]:
        params = dict(model.named_parameters())
        out = torch.cat([p.flatten() for n, p in params.items() if n.endswith(projections)])
        other = [p for n, p in params.items() if p.dim() == 2 and not n.endswith(projections)]
        return float(out.std()), float(torch.cat([p.flatten() for p in other]).std())

    torch.manual_seed(0)
    scaled, rest = stds(build_model(cfg))
    assert scaled == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert rest == pytest.approx(0.02, rel=0.05)
    torch.manual_seed(0)
    plain, _ = stds(build_model(dataclasses.replace(cfg, scale_residual_init=False)))
    assert plain == pytest.approx(0.02, rel=0.05)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    for cfg in CFGS:
        model = build_model(cfg).eval()
        a = torch.randint(0, 257, (1, 10))
        b = a.clone()
        b[0, 7:] = (b[0, 7:] + 1) % 257
        la, lb = model(a)[0], model(b)[0]
        assert torch.equal(la[:, :7], lb[:, :7])


def test_optimizer_groups() -> None:
    model = build_model(CFGS[0])
    opt = configure_optimizer(
        model, lr=1e-3, weight_decay=0.1, device_type="cpu", betas=(0.9, 0.95)
    )
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def _export(tmp_path: Path, cfg: ModelConfig) -> tuple[torch.nn.Module, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    tok_path = tmp_path / "tokenizer.json"
    tokmod.byte_tokenizer().save(str(tok_path))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = str(tmp_path / "export")
    export_model(model.state_dict(), cfg, tokenizer_path=str(tok_path), eot_id=256, export_dir=out)
    return model, out


@pytest.mark.parametrize("cfg", CFGS, ids=IDS)
def test_export_round_trip(tmp_path: Path, cfg: ModelConfig) -> None:
    model, out = _export(tmp_path, cfg)
    files = sorted(p.name for p in Path(out).iterdir())
    assert files == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    hf_cfg = json.loads((Path(out) / "config.json").read_text())
    state = load_file(str(Path(out) / "model.safetensors"))
    if cfg.arch == "gpt2":
        assert hf_cfg["architectures"] == ["GPT2LMHeadModel"]
        # HF Conv1D layout: (in, out).
        assert state["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)
        assert "transformer.wte.weight" in state and "transformer.wpe.weight" in state
    else:
        assert hf_cfg["architectures"] == ["LlamaForCausalLM"]
        assert "model.layers.0.self_attn.q_proj.weight" in state
        assert "model.embed_tokens.weight" in state
    assert ("lm_head.weight" in state) == (not cfg.tie_embeddings)
    loaded = load_model(out)
    idx = torch.randint(0, 257, (2, cfg.seq_len))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.model(idx)[0])


def test_transformers_loads_export(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for i, cfg in enumerate(CFGS):
        model, out = _export(tmp_path / str(i), cfg)
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        idx = torch.randint(0, 257, (2, cfg.seq_len))
        with torch.no_grad():
            torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_generate(tmp_path: Path) -> None:
    cfg = CFGS[0]
    _, out = _export(tmp_path, cfg)
    loaded = load_model(out)
    greedy = generate(
        loaded, "The river", max_new_tokens=50, temperature=0.0, top_k=None, seed=None
    )
    assert greedy == generate(loaded, "The river", 50, 0.0, None, None)
    sampled = generate(loaded, "", max_new_tokens=40, temperature=1.0, top_k=20, seed=7)
    assert sampled == generate(loaded, "", 40, 1.0, 20, 7)
    # Prompts longer than seq_len are cropped, not rejected.
    assert isinstance(generate(loaded, "x" * 100, 5, 0.8, None, 1), str)

    # Concurrent calls with their own seeds do not disturb each other.
    results: dict[int, str] = {}

    def worker(seed: int) -> None:
        results[seed] = generate(loaded, "a", 30, 1.0, None, seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in range(4):
        assert results[s] == generate(loaded, "a", 30, 1.0, None, s)


@pytest.mark.parametrize("cfg", CFGS[:2], ids=IDS[:2])
def test_kv_cache_matches_full_recompute(tmp_path: Path, cfg: ModelConfig) -> None:
    _, out = _export(tmp_path, cfg)
    loaded = load_model(out)
    loaded.eot_id = -1  # a random model may emit EOT at once; keep generating to compare
    # 10 prompt tokens + 40 new crosses seq_len (32): the fallback path runs too.
    for prompt in ("The river", "x" * 40):
        cached = generate(loaded, prompt, 40, temperature=0.0)
        full = generate(loaded, prompt, 40, temperature=0.0, use_cache=False)
        assert cached == full and len(cached.encode()) >= 40
    # Nucleus sampling with a tiny top_p keeps only the top token: greedy again.
    greedy = generate(loaded, "The river", 20, temperature=0.0)
    assert generate(loaded, "The river", 20, temperature=1.0, top_p=1e-6, seed=3) == greedy
    sampled = generate(loaded, "a", 20, temperature=1.0, top_p=0.9, seed=5)
    assert sampled == generate(loaded, "a", 20, temperature=1.0, top_p=0.9, seed=5)
    with pytest.raises(ValueError, match="top_p"):
        generate(loaded, "a", 1, top_p=0.0)


def test_cached_logits_match_uncached() -> None:
    torch.manual_seed(0)
    for cfg in CFGS:
        model = build_model(cfg).eval()
        idx = torch.randint(0, 257, (2, 12))
        with torch.no_grad():
            full = model(idx)[0]
            cache = KVCache(cfg, 2, torch.device("cpu"), torch.float32)
            # Prefill 5, a chunk of 4 (the shifted causal mask) and then one at a time.
            parts = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:9], cache=cache)[0]]
            parts += [model(idx[:, i : i + 1], cache=cache)[0] for i in range(9, 12)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(180)
def test_compiled_cross_entropy_matches_eager() -> None:
    """The compiled loss the training tasks use when the model is compiled: same values and
    gradients as the eager one, ignored positions included, from bf16 logits."""
    torch.manual_seed(0)
    logits = (torch.randn(2, 16, 257) * 3).to(torch.bfloat16)
    targets = torch.randint(0, 257, (2, 16))
    targets[0, :5] = IGNORE_INDEX
    assert cross_entropy(False) is token_cross_entropy
    compiled = cross_entropy(True)
    assert compiled is not token_cross_entropy and cross_entropy(True) is compiled  # compiled once
    for reduction in ("sum", "none"):
        a = logits.clone().requires_grad_()
        b = logits.clone().requires_grad_()
        eager = token_cross_entropy(a, targets, reduction=reduction)
        fused = compiled(b, targets, reduction=reduction)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)
        eager.sum().backward()
        fused.sum().backward()
        assert a.grad is not None and b.grad is not None and b.grad.dtype == torch.bfloat16
        torch.testing.assert_close(b.grad.float(), a.grad.float(), rtol=1e-2, atol=1e-3)
        assert (b.grad[0, :5] == 0).all()


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_attention_on_the_cpu_is_computed_in_fp32(packed: bool) -> None:
    # Under bf16 autocast, the CPU's bf16 attention backward is several times slower than
    # its fp32 one; attention runs in fp32, forward and backward, between bf16 products.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 32).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.ones(2, 1, 16, 16, dtype=torch.bool).tril() if packed else None
    grad = torch.randn(2, 4, 16, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q, k, v, 0.0, mask)
    out.backward(grad)

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    if packed:
        want = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=mask)
    else:
        want = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    want.bfloat16().backward(grad)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, want.bfloat16())
    for t, t32 in ((q, q32), (k, k32), (v, v32)):
        assert t.grad is not None and t32.grad is not None
        assert torch.equal(t.grad, t32.grad.bfloat16())

    # Without gradients the same: a model computes alike in training and evaluation.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(causal_attention(q, k, v, 0.0, mask), out)
