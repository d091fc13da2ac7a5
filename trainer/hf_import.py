"""Base models for fine-tuning: an HF folder read into our CausalLM, grown for chat tokens.

Reading goes through trainer.sample.load_model (config.json mapping, safetensors only,
GPT-2 Conv1D transposes), so there is one loader for exported and imported models.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer import chat
from trainer import tokenizer as tokmod
from trainer.model import CausalLM, build_model
from trainer.sample import load_model

_EMBEDDING = {"gpt2": "wte", "llama": "embed_tokens"}  # token embedding's name in body()


def load_base_model(folder: str, *, dropout: float = 0.0) -> CausalLM:
    """The model of an HF folder (config.json + model.safetensors), on CPU, in train mode."""
    loaded = load_model(folder)
    if dropout == loaded.config.dropout:
        return loaded.model.train()
    # Dropout rates are fixed when the modules are built, so build again and copy over.
    model = build_model(dataclasses.replace(loaded.config, dropout=dropout))
    model.load_state_dict(loaded.model.state_dict())
    return model


def added_chat_token_ids(base_dir: str, tok: Tokenizer) -> list[int]:
    """Ids in tok of the chat tokens that the base model's own tokenizer does not have."""
    base = tokmod.load(os.path.join(base_dir, "tokenizer.json"))
    missing = [t for t in chat.CHAT_TOKENS if base.token_to_id(t) is None]
    return [chat.special_id(tok, t) for t in missing]


@torch.no_grad()
def resize_token_embeddings(model: CausalLM, vocab_size: int, new_ids: list[int]) -> None:
    """Grow the embedding (and an untied head) to vocab_size; set rows new_ids to the mean.

    The mean of the trained rows is a neutral start: a new token then looks like an average
    token to the network instead of a random direction that can dominate the logits.
    """
    old = model.cfg.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")
    if any(not 0 <= i < vocab_size for i in new_ids):
        raise ValueError(f"new token ids {new_ids} are outside a vocabulary of {vocab_size}")
    body = model.body()
    name = _EMBEDDING[model.cfg.arch]
    emb: nn.Embedding = getattr(body, name)
    trained = [i for i in range(old) if i not in set(new_ids)]
    if vocab_size > old:
        grown = nn.Embedding(vocab_size, emb.embedding_dim, device=emb.weight.device)
        grown.weight.copy_(_grow(emb.weight, vocab_size, trained))
        setattr(body, name, grown)
        emb = grown
    else:
        emb.weight[new_ids] = emb.weight[trained].mean(dim=0)
    if model.cfg.tie_embeddings:
        model.lm_head.weight = emb.weight
    else:
        head = model.lm_head
        if vocab_size > old:
            head = nn.Linear(head.in_features, vocab_size, bias=False, device=head.weight.device)
            head.weight.copy_(_grow(model.lm_head.weight, vocab_size, trained))
            model.lm_head = head
        else:
            head.weight[new_ids] = head.weight[trained].mean(dim=0)
    model.cfg = dataclasses.replace(model.cfg, vocab_size=vocab_size)


def _grow(weight: torch.Tensor, vocab_size: int, trained: list[int]) -> torch.Tensor:
    """weight (V, C) extended to (vocab_size, C); every row not in trained is the mean."""
    mean = weight[trained].mean(dim=0)
    out = mean.expand(vocab_size, -1).clone()  # (V', C)
    out[trained] = weight[trained]
    return out


def train_token_rows(model: CausalLM, ids: list[int]) -> list[torch.Tensor]:
    """Make only the given rows of the embedding (and an untied head) trainable.

    Used under LoRA for the chat tokens: frozen rows that were never trained would leave
    `<|im_start|>` and `<|im_end|>` indistinguishable. Gradients of all other rows are
    zeroed, so with no weight decay on these parameters those rows never move.
    Returns the parameters to optimise (without weight decay).
    """
    emb: nn.Embedding = getattr(model.body(), _EMBEDDING[model.cfg.arch])
    params: list[torch.Tensor] = []
    # A tied head is the embedding's own Parameter: hook it once.
    weights = [emb.weight, model.lm_head.weight]
    for p in {id(p): p for p in weights}.values():
        keep = torch.zeros(p.shape[0], 1, device=p.device, dtype=p.dtype)
        keep[ids] = 1.0
        p.requires_grad_(True)
        # The mask follows the gradient to whatever device the model was moved to.
        p.register_hook(lambda g, keep=keep: g * keep.to(g.device))
        params.append(p)
    return params
