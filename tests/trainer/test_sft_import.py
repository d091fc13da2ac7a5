"""Base models: an exported folder loaded for fine-tuning and grown for chat tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import chat
from trainer import tokenizer as tokmod
from trainer.config import ModelConfig
from trainer.export import export_model
from trainer.hf_import import (
    added_chat_token_ids,
    load_base_model,
    resize_token_embeddings,
    train_token_rows,
)
from trainer.model import build_model


def _base(tmp_path: Path, arch: str, tied: bool) -> str:
    cfg = ModelConfig(
        arch=arch,  # type: ignore[arg-type]
        n_layer=1,
        n_head=2,
        d_model=32,
        vocab_size=257,
        seq_len=16,
        tie_embeddings=tied,
    )
    tok_path = tmp_path / "byte.json"
    tokmod.byte_tokenizer().save(str(tok_path))
    torch.manual_seed(0)
    out = str(tmp_path / "base")
    export_model(
        build_model(cfg).state_dict(), cfg, tokenizer_path=str(tok_path), eot_id=256, export_dir=out
    )
    return out


@pytest.mark.parametrize(("arch", "tied"), [("gpt2", True), ("llama", False), ("llama", True)])
def test_resize_for_chat_tokens(tmp_path: Path, arch: str, tied: bool) -> None:
    base_dir = _base(tmp_path, arch, tied)
    model = load_base_model(base_dir, dropout=0.1)
    assert model.training and model.cfg.dropout == 0.1
    model.eval()
    idx = torch.randint(0, 257, (2, 16))
    before = model(idx)[0]
    old_emb = model.body().get_submodule("wte" if arch == "gpt2" else "embed_tokens").weight
    old_mean = old_emb.detach().mean(dim=0).clone()

    tok = tokmod.load(str(Path(base_dir) / "tokenizer.json"))
    chat.ensure_chat_tokens(tok)
    new_ids = added_chat_token_ids(base_dir, tok)
    assert new_ids == [257, 258]
    resize_token_embeddings(model, tokmod.vocab_size(tok), new_ids)
    assert model.cfg.vocab_size == 259
    emb = model.body().get_submodule("wte" if arch == "gpt2" else "embed_tokens").weight
    assert emb.shape == (259, 32) and model.lm_head.weight.shape == (259, 32)
    assert (model.lm_head.weight is emb) == tied
    assert torch.allclose(emb[257], old_mean) and torch.equal(emb[257], emb[258])
    after = model(idx)[0]
    assert after.shape == (2, 16, 259)
    assert torch.allclose(after[..., :257], before, atol=1e-6)  # old tokens behave the same


def test_resize_in_place_when_the_vocabulary_has_room(tmp_path: Path) -> None:
    model = load_base_model(_base(tmp_path, "llama", False))
    resize_token_embeddings(model, 257, [255, 256])
    emb = model.body().get_submodule("embed_tokens").weight
    assert emb.shape[0] == 257
    assert torch.allclose(emb[256], emb[:255].mean(dim=0))


def test_token_rows_train_alone(tmp_path: Path) -> None:
    model = load_base_model(_base(tmp_path, "llama", False))
    model.requires_grad_(False)
    params = train_token_rows(model, [3, 7])
    assert len(params) == 2  # embedding and the untied head
    idx = torch.randint(0, 257, (2, 16))
    idx[0, :2] = torch.tensor([3, 7])  # so the embedding rows get a gradient too
    _, loss = model(idx, idx)
    loss.backward()
    for p in params:
        assert p.grad is not None
        assert p.grad.abs().sum(dim=1).nonzero().flatten().tolist() == [3, 7]
