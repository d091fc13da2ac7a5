"""Mixture of experts: routing, losses, sizes, the Mixtral round trip and a training run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.trainer_testkit import (
    make_dataset,
    read_events,
    run_config,
    run_in_process,
    run_trainer,
    write_config,
)
from trainer import tokenizer as tokmod
from trainer.config import EXIT_OK, PRESETS, ModelConfig, MoEConfig, RunConfig, TrainingConfig
from trainer.export import export_model
from trainer.hf_import import load_base_model
from trainer.model import build_model
from trainer.moe import SparseMoE, router_stats
from trainer.sample import load_model
from trainer.sizing import estimate_memory, flops_per_token, param_count


def _cfg(**moe: Any) -> ModelConfig:
    return ModelConfig(
        arch="llama",
        n_layer=2,
        n_head=4,
        d_model=32,
        vocab_size=257,
        seq_len=16,
        n_kv_head=2,
        d_ff=48,
        moe=MoEConfig(**{"num_experts": 4, "top_k": 2, **moe}),
    )


def test_experts_match_one_token_at_a_time() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    moe = SparseMoE(cfg)
    for w in (moe.w1, moe.w2, moe.w3):
        torch.nn.init.normal_(w, std=0.1)
    x = torch.randn(3, 5, 32, requires_grad=True)
    y, logits = moe(x)
    assert logits.shape == (15, 4)

    # The definition: each token's top-2 experts, weighted by renormalised router probs.
    flat = x.detach().reshape(-1, 32)
    expected = torch.zeros_like(flat)
    probs = F.softmax(moe.gate(flat), dim=-1)
    for n in range(flat.shape[0]):
        top = probs[n].topk(2)
        for p, e in zip(top.values / top.values.sum(), top.indices.tolist(), strict=True):
            h = F.silu(moe.w1[e] @ flat[n]) * (moe.w3[e] @ flat[n])
            expected[n] += p * (moe.w2[e] @ h)
    torch.testing.assert_close(y.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert x.grad is not None and moe.w1.grad is not None


def test_router_losses_and_loads() -> None:
    moe = MoEConfig(num_experts=4, top_k=2, aux_loss_coef=0.1, router_z_loss_coef=0.01)
    # Tokens spread evenly over the experts (token n prefers n % 4, then n + 1 % 4), with
    # nearly uniform probabilities.
    eye = torch.eye(4)
    even = ((2 * eye + eye.roll(1, dims=1)) * 1e-3).repeat(25, 1)  # (100, 4)
    stats = router_stats([even], moe)
    assert stats.aux_loss.item() == pytest.approx(2.0, rel=1e-3)  # E * sum f*P = top_k
    torch.testing.assert_close(stats.load, torch.full((1, 4), 0.25))
    # Every token prefers experts 0 and 1: the loss grows, the load shows it.
    skewed = torch.tensor([[5.0, 4.0, 0.0, 0.0]]).repeat(100, 1)
    bad = router_stats([even, skewed], moe)
    assert bad.aux_loss > stats.aux_loss
    torch.testing.assert_close(bad.load[1], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    z = torch.logsumexp(skewed, dim=-1).pow(2).mean()
    assert bad.z_loss.item() == pytest.approx((stats.z_loss.item() + z.item()) / 2, rel=1e-5)
    assert bad.penalty.item() == pytest.approx(0.1 * bad.aux_loss.item() + 0.01 * bad.z_loss.item())


def test_training_loss_adds_the_penalty_and_evaluation_does_not() -> None:
    cfg = _cfg(aux_loss_coef=0.5, router_z_loss_coef=0.1)
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, 257, (2, 16))
    _, train_loss = model(idx, idx)
    stats = model.router_stats
    assert stats is not None and train_loss is not None
    assert stats.load.shape == (2, 4)
    model.eval()
    _, eval_loss = model(idx, idx)
    assert eval_loss is not None
    assert train_loss.item() == pytest.approx(eval_loss.item() + stats.penalty.item(), rel=1e-6)
    dense = dataclasses.replace(cfg, moe=None)
    build_model(dense)(idx)
    assert build_model(dense).router_stats is None


@pytest.mark.parametrize("every", [1, 2])
def test_param_count_and_flops(every: int) -> None:
    cfg = _cfg(every_k_layers=every)
    model = build_model(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    dense = dataclasses.replace(cfg, moe=None)
    experts = len(cfg.moe_layers) * (3 * 32 * 48 * 4 + 32 * 4)
    assert param_count(cfg) == param_count(dense) - len(cfg.moe_layers) * 3 * 32 * 48 + experts
    # A token passes through 2 of the 4 experts (and the router).
    active = param_count(dense) + len(cfg.moe_layers) * (3 * 32 * 48 + 32 * 4)
    assert flops_per_token(cfg) == 6 * active + 12 * 2 * 32 * 16


def test_memory_estimate_counts_every_expert() -> None:
    cfg = _cfg()
    t = TrainingConfig(seq_len=16, batch_size=4, micro_batch_size=4, precision="fp32")
    torch.manual_seed(0)
    model = build_model(cfg)
    params = sum(p.numel() * 4 for p in model.parameters())
    est = estimate_memory(cfg, t, world_size=1, strategy="ddp", accelerator="cpu")
    assert est["parameters"] == params and est["optimizer"] == 2 * params

    saved: dict[int, int] = {}
    ptrs = {p.data_ptr() for p in model.parameters()}

    def pack(x: torch.Tensor) -> torch.Tensor:
        if x.data_ptr() not in ptrs and x.is_floating_point():
            saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    idx = torch.randint(0, 257, (4, 16))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        model(idx, idx)
    measured = sum(saved.values()) + 4 * 16 * 257 * 4  # plus the logits' gradient
    # Routing is random at init, so the experts' padded buffers vary: a looser bound.
    assert abs(est["activations"] - measured) / measured < 0.25, (est["activations"], measured)
    dense = estimate_memory(dataclasses.replace(cfg, moe=None), t, 1, "ddp", "cpu")
    assert est["parameters"] > 2 * dense["parameters"]
    assert est["activations"] > dense["activations"]


def _export(tmp_path: Path, cfg: ModelConfig) -> tuple[torch.nn.Module, str]:
    tok_path = tmp_path / "tokenizer.json"
    tokmod.byte_tokenizer().save(str(tok_path))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = str(tmp_path / "export")
    export_model(model.state_dict(), cfg, tokenizer_path=str(tok_path), eot_id=256, export_dir=out)
    return model, out


@pytest.mark.parametrize(
    ("every", "tied"), [(1, True), (2, False)], ids=["all-moe", "dense-between"]
)
def test_mixtral_loads_export(tmp_path: Path, every: int, tied: bool) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = dataclasses.replace(_cfg(every_k_layers=every), tie_embeddings=tied)
    model, out = _export(tmp_path, cfg)
    hf_cfg = json.loads((Path(out) / "config.json").read_text())
    assert hf_cfg["architectures"] == ["MixtralForCausalLM"]
    assert hf_cfg["mlp_only_layers"] == ([] if every == 1 else [0])
    hf = transformers.MixtralForCausalLM.from_pretrained(out).eval()
    idx = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        ours = model(idx)[0]
        torch.testing.assert_close(ours, hf(idx).logits, atol=1e-4, rtol=1e-4)
        # Read back for sampling and fine-tuning: the same model, dense layers included.
        loaded = load_model(out)
        assert loaded.config == cfg
        assert torch.equal(loaded.model(idx)[0], ours)
        base = load_base_model(out).eval()
        assert torch.equal(base(idx)[0], ours)


def test_imports_a_mixtral_saved_by_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.MixtralConfig(
        vocab_size=257,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        rope_theta=5000.0,
    )
    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    tokmod.byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    model = load_base_model(str(tmp_path)).eval()
    assert model.cfg.moe == MoEConfig(num_experts=4, top_k=2, aux_loss_coef=0.001)
    assert model.cfg.rope_theta == 5000.0
    idx = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=1e-4)


def test_trains_and_reports_router_metrics(tmp_path: Path) -> None:
    tok, data = make_dataset(tmp_path, n_docs=40)
    raw = run_config(tmp_path, "moe", tok, data, preset="tiny-moe", max_steps=4, eval_interval=4)
    cfg = RunConfig.from_dict(raw)
    assert cfg.model is not None and cfg.model.moe == MoEConfig(**PRESETS["tiny-moe"]()["moe"])
    assert run_in_process(raw) == EXIT_OK
    steps = [e for e in read_events(cfg.output_dir) if e["type"] == "step"]
    assert len(steps) == 4
    for e in steps:
        assert e["aux_loss"] >= 2.0 - 1e-4  # top_k is the balanced minimum
        assert sorted(e["expert_load"]) == ["0", "1"]
        for shares in e["expert_load"].values():
            assert len(shares) == 4 and sum(shares) == pytest.approx(1.0)
    done = read_events(cfg.output_dir)[-1]
    assert done["type"] == "done" and load_model(done["export_dir"]).config.moe is not None


def test_fsdp_over_two_processes(tmp_path: Path) -> None:
    tok, data = make_dataset(tmp_path, n_docs=40)
    raw = run_config(tmp_path, "fsdp", tok, data, preset="tiny-moe", max_steps=3, eval_interval=3)
    raw["resources"]["strategy"] = "fsdp"
    assert run_trainer(write_config(raw, tmp_path / "run.json"), nproc=2) == EXIT_OK
    events = read_events(raw["output_dir"])
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3] and all(e["aux_loss"] > 0 for e in steps)
    assert events[-1]["type"] == "done"
    assert load_model(events[-1]["export_dir"]).config.moe is not None  # gathered on rank 0
