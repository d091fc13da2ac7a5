"""Load an exported (HF-format) model folder and sample text from it.

The API calls generate() from worker threads, so it keeps all sampling state local: the
model is only read (eval mode, no grad) and each call has its own torch.Generator.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from trainer import tokenizer as tokmod
from trainer.config import ModelConfig
from trainer.export import is_conv1d_key
from trainer.model import CausalLM, build_model


@dataclass
class LoadedModel:
    """A model ready for generation, with its tokenizer."""

    model: CausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    eot_id: int
    device: torch.device


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from a GPT2Config or LlamaConfig config.json."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        return ModelConfig(
            arch="gpt2",
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_model=hf["n_embd"],
            vocab_size=hf["vocab_size"],
            seq_len=hf["n_positions"],
            d_ff=hf.get("n_inner"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True),
        )
    if kind == "llama":
        d, n_head = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim", d // n_head) != d // n_head:
            raise ValueError("llama models with head_dim != hidden_size / heads are unsupported")
        if hf.get("rope_scaling"):
            raise ValueError("llama models with rope_scaling are not supported yet")
        return ModelConfig(
            arch="llama",
            n_layer=hf["num_hidden_layers"],
            n_head=n_head,
            d_model=d,
            vocab_size=hf["vocab_size"],
            seq_len=hf["max_position_embeddings"],
            n_kv_head=hf.get("num_key_value_heads"),
            d_ff=hf["intermediate_size"],
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
        )
    raise ValueError(f"unsupported model_type {kind!r}; expected 'gpt2' or 'llama'")


def load_model(folder: str, device: str = "cpu") -> LoadedModel:
    """Read config.json, model.safetensors and tokenizer.json from an exported folder."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = model_config_from_hf(json.load(f))
    hf_state = load_file(os.path.join(folder, "model.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for key, t in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers some GPT-2 exports carry; we use is_causal
        t = t.float()
        state[key] = t.t().contiguous() if cfg.arch == "gpt2" and is_conv1d_key(key) else t
    if cfg.tie_embeddings:
        embed = "transformer.wte.weight" if cfg.arch == "gpt2" else "model.embed_tokens.weight"
        state.setdefault("lm_head.weight", state[embed])
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    dev = torch.device(device)
    model.to(dev).eval()
    tok = tokmod.load(os.path.join(folder, "tokenizer.json"))
    return LoadedModel(model, tok, cfg, tokmod.eot_id(tok), dev)


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """The completion of prompt (without the prompt); stops early at end-of-text.

    temperature 0 picks the most likely token (greedy); seed makes sampling repeatable.
    """
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    g = torch.Generator(device=loaded.device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    ids = loaded.tokenizer.encode(prompt).ids or [loaded.eot_id]  # empty prompt: start fresh
    idx = torch.tensor([ids], dtype=torch.long, device=loaded.device)  # (1, T)
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = idx[:, -loaded.config.seq_len :]  # the model has no positions beyond seq_len
        logits, _ = loaded.model(context)
        logits = logits[:, -1, :].float()  # (1, V)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k).values[:, -1:]  # (1, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, 1, generator=g)  # (1, 1)
        token = int(next_id.item())
        if token == loaded.eot_id:
            break
        new.append(token)
        idx = torch.cat([idx, next_id], dim=1)
    return str(loaded.tokenizer.decode(new))
