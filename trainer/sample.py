"""Load an exported (HF-format) model folder and sample text from it.

The platform samples in its model worker processes, possibly from several threads, so all
sampling state stays local: the model is only read (eval mode, no grad) and each call has
its own torch.Generator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from trainer import tokenizer as tokmod
from trainer.config import ModelConfig
from trainer.export import from_hf_state_dict
from trainer.hf_config import model_config_from_hf
from trainer.model import CausalLM, KVCache, build_model


@dataclass
class LoadedModel:
    """A model ready for generation, with its tokenizer."""

    model: CausalLM
    tokenizer: Tokenizer
    config: ModelConfig
    eot_id: int
    device: torch.device


def load_model(folder: str, device: str = "cpu") -> LoadedModel:
    """Read config.json, model.safetensors and tokenizer.json from an exported folder."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = model_config_from_hf(json.load(f))
    state = from_hf_state_dict(load_file(os.path.join(folder, "model.safetensors")), cfg)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    dev = torch.device(device)
    model.to(dev).eval()
    tok = tokmod.load(os.path.join(folder, "tokenizer.json"))
    return LoadedModel(model, tok, cfg, tokmod.eot_id(tok), dev)


GREEDY_BELOW = 1e-4  # temperatures this small sample as greedy


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    g: torch.Generator,
) -> torch.Tensor:
    """Choose the next token (1, 1) from last-position logits (1, V)."""
    if temperature < GREEDY_BELOW:  # dividing by a vanishing temperature overflows
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]  # (1, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # (1, V) each
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the tokens ranked above it already cover top_p of the mass;
        # the most likely token is always kept.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False  # rounding must not drop it for a vanishing top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=g)  # (1, 1)


@dataclass
class Completion:
    """Generated text with its token counts and why it ended ("stop" or "length")."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def generate(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
    *,
    use_cache: bool = True,
    stop_ids: Sequence[int] | None = None,
) -> str:
    """The text of complete(): the continuation of prompt, without the prompt."""
    return complete(
        loaded,
        prompt,
        max_new_tokens,
        temperature,
        top_k,
        seed,
        top_p,
        use_cache=use_cache,
        stop_ids=stop_ids,
    ).text


def complete(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
    *,
    use_cache: bool = True,
    stop_ids: Sequence[int] | None = None,
) -> Completion:
    """The completion of prompt (without the prompt); stops early at end-of-text.

    stop_ids replaces end-of-text as the tokens that end the completion (a chat model
    stops at `<|im_end|>`). See stream() for the sampling options.
    """
    prompt_tokens = len(loaded.tokenizer.encode(prompt).ids) or 1
    new = list(
        stream(
            loaded,
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            seed,
            top_p,
            use_cache=use_cache,
            stop_ids=stop_ids,
        )
    )
    # Only a stop token ends the stream before max_new_tokens.
    finish = "length" if len(new) == max_new_tokens else "stop"
    return Completion(str(loaded.tokenizer.decode(new)), prompt_tokens, len(new), finish)


@torch.inference_mode()
def stream(
    loaded: LoadedModel,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
    *,
    use_cache: bool = True,
    stop_ids: Sequence[int] | None = None,
) -> Iterator[int]:
    """The completion's token ids one at a time, as each is sampled; the stop token that
    ends it is not yielded.

    temperature 0 picks the most likely token (greedy); top_k and top_p (nucleus) restrict
    sampling to the likeliest tokens; seed makes sampling repeatable. The prompt is
    prefilled once into a KV cache and each new token costs one position's forward pass.
    """
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError("top_p must be in (0, 1]")
    g = torch.Generator(device=loaded.device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    model, seq_len = loaded.model, loaded.config.seq_len
    tokens = loaded.tokenizer.encode(prompt).ids or [loaded.eot_id]  # empty prompt: start fresh
    stops = set(stop_ids) if stop_ids is not None else {loaded.eot_id}
    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = KVCache(loaded.config, 1, loaded.device, dtype)
    pending = tokens[-seq_len:]  # tokens not in the cache yet; the model has no positions beyond
    for _ in range(max_new_tokens):
        if cache is not None and cache.pos + len(pending) <= seq_len:
            idx = torch.tensor([pending], dtype=torch.long, device=loaded.device)  # (1, T)
            logits, _ = model(idx, cache=cache)
        else:
            # The context is full: GPT-2's learned positions cannot slide along, so run the
            # last seq_len tokens afresh (what an uncached model does at every step).
            idx = torch.tensor([tokens[-seq_len:]], dtype=torch.long, device=loaded.device)
            logits, _ = model(idx)
        next_id = _pick(logits[:, -1, :].float(), temperature, top_k, top_p, g)  # (1, 1)
        token = int(next_id.item())
        if token in stops:
            return
        yield token
        tokens.append(token)
        pending = [token]
