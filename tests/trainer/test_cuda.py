"""Paths that only a GPU exercises; skipped where there is no CUDA device.

bench/gpu.py runs the whole platform on a GPU; these are the trainer-level pieces it found
broken once, kept as tests for any machine that has a GPU.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig
from trainer.hf_import import train_token_rows
from trainer.model import build_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_chat_token_rows_train_after_the_model_moves_to_the_gpu() -> None:
    model = build_model(ModelConfig("gpt2", 2, 2, 32, vocab_size=64, seq_len=16))
    for p in model.parameters():
        p.requires_grad_(False)
    train_token_rows(model, [5, 7])
    model.to("cuda")
    idx = torch.randint(0, 64, (2, 16), device="cuda")
    _, loss = model(idx, idx)
    assert loss is not None
    loss.backward()
    grad = model.lm_head.weight.grad
    assert grad is not None
    moved = grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert set(moved) <= {5, 7} and moved


def test_compiled_blocks_with_activation_checkpointing_match_eager() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig("llama", 2, 4, 64, vocab_size=128, seq_len=32)
    eager = build_model(cfg).cuda()
    compiled = build_model(cfg).cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.set_activation_checkpointing(True)
    for block in compiled.blocks():
        block.compile()
    idx = torch.randint(0, 128, (2, 32), device="cuda")
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        assert loss is not None
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert torch.allclose(a.grad, b.grad, rtol=5e-2, atol=5e-3)
