"""Export a trained model as a Hugging Face folder (safetensors + config + tokenizer).

The folder loads with `transformers` (GPT2LMHeadModel, LlamaForCausalLM or, with
experts, MixtralForCausalLM) and with trainer.sample, which needs no transformers at all.
config.json comes from trainer.hf_config; the weights' names and layouts are mapped here,
both ways.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

import torch

from trainer.chat import CHAT_TEMPLATE
from trainer.config import ModelConfig
from trainer.hf_config import hf_config
from trainer.tokenizer import EOT, IM_END

# GPT-2's Conv1D layers store weights as (in, out), the transpose of nn.Linear.
_CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def is_conv1d_key(key: str) -> bool:
    """Whether HF GPT-2 stores this weight transposed."""
    return key.endswith(_CONV1D_SUFFIXES) and key.startswith("transformer.h.")


_EXPERT_WEIGHTS = ("w1", "w2", "w3")  # Mixtral's gate, down and up projections
_DENSE_AS_EXPERT = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def to_hf_state_dict(model_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, Any]:
    """Our state dict in HF layout: same names, Conv1D transposed, tied head dropped.

    With experts (Mixtral): stacked expert weights split into one tensor per expert, and
    a dense layer's MLP repeated as every expert of its layer under a zero router, which
    gives each expert the same weight, so the layer computes that MLP exactly.
    """
    out: dict[str, torch.Tensor] = {}

    def put(key: str, t: torch.Tensor) -> None:
        out[key] = t.detach().to("cpu", torch.float32).contiguous().clone()

    for key, t in model_state.items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties it from the embedding; safetensors rejects shared storage
        if cfg.arch == "gpt2" and is_conv1d_key(key):
            t = t.t()
        prefix, _, name = key.rpartition(".")
        if cfg.moe is not None and prefix.endswith(".block_sparse_moe") and name in _EXPERT_WEIGHTS:
            for e in range(cfg.moe.num_experts):
                put(f"{prefix}.experts.{e}.{name}.weight", t[e])
        elif cfg.moe is not None and ".mlp." in key:  # model.layers.{i}.mlp.{proj}.weight
            layer, _, rest = key.partition(".mlp.")
            proj = rest.partition(".")[0]
            for e in range(cfg.moe.num_experts):
                put(f"{layer}.block_sparse_moe.experts.{e}.{_DENSE_AS_EXPERT[proj]}.weight", t)
            gate = f"{layer}.block_sparse_moe.gate.weight"
            out[gate] = torch.zeros(cfg.moe.num_experts, cfg.d_model)
        else:
            put(key, t)
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, Any]:
    """An HF folder's weights in our layout: the inverse of to_hf_state_dict."""
    state: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for key, t in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers some GPT-2 exports carry; we use is_causal
        t = t.float()
        if cfg.arch == "gpt2" and is_conv1d_key(key):
            t = t.t().contiguous()
        if ".block_sparse_moe.experts." in key:
            # model.layers.{i}.block_sparse_moe.experts.{e}.{w1|w2|w3}.weight
            moe_prefix, _, rest = key.partition(".experts.")
            e, name, _ = rest.split(".")
            experts.setdefault(f"{moe_prefix}.{name}", {})[int(e)] = t
        else:
            state[key] = t
    for key, per_expert in experts.items():
        moe_prefix, _, name = key.rpartition(".")
        layer_prefix = moe_prefix.removesuffix(".block_sparse_moe")
        layer = int(layer_prefix.rpartition(".")[2])
        if cfg.is_moe_layer(layer):
            state[key] = torch.stack([per_expert[e] for e in sorted(per_expert)])
        else:  # a dense layer written as identical experts: any one of them is the MLP
            proj = {v: k for k, v in _DENSE_AS_EXPERT.items()}[name]
            state[f"{layer_prefix}.mlp.{proj}.weight"] = per_expert[0]
    for layer in range(cfg.n_layer):
        if not cfg.is_moe_layer(layer):  # its zero router has no counterpart
            state.pop(f"model.layers.{layer}.block_sparse_moe.gate.weight", None)
    if cfg.tie_embeddings:
        embed = "transformer.wte.weight" if cfg.arch == "gpt2" else "model.embed_tokens.weight"
        state.setdefault("lm_head.weight", state[embed])
    return state


def _write_json(path: str, obj: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def export_model(
    model_state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    *,
    tokenizer_path: str,
    eot_id: int,
    export_dir: str,
    im_end_id: int | None = None,
) -> str:
    """Write model.safetensors, config.json and tokenizer files to export_dir atomically.

    im_end_id marks a chat model: tokenizer_config.json then carries the chat template
    with `<|im_end|>` as eos, and generation stops at `<|im_end|>` or EOT.
    """
    # Imported here, not at the top: a training run needs it only once, at its end.
    from safetensors.torch import save_file

    eos_ids: int | list[int] = eot_id if im_end_id is None else [im_end_id, eot_id]
    chat_fields = {} if im_end_id is None else {"eos_token": IM_END, "chat_template": CHAT_TEMPLATE}
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(export_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        save_file(
            to_hf_state_dict(model_state, cfg),
            os.path.join(tmp, "model.safetensors"),
            metadata={"format": "pt"},
        )  # transformers refuses files without it
        _write_json(os.path.join(tmp, "config.json"), hf_config(cfg, eot_id))
        _write_json(
            os.path.join(tmp, "generation_config.json"),
            {
                "bos_token_id": eot_id,
                "eos_token_id": eos_ids,
                "max_length": cfg.seq_len,
            },
        )
        shutil.copyfile(tokenizer_path, os.path.join(tmp, "tokenizer.json"))
        _write_json(
            os.path.join(tmp, "tokenizer_config.json"),
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": EOT,
                "eos_token": EOT,
                "model_max_length": cfg.seq_len,
                "clean_up_tokenization_spaces": False,
                **chat_fields,
            },
        )
        if os.path.exists(export_dir):
            old = f"{export_dir}.old-{uuid.uuid4().hex[:8]}"
            os.rename(export_dir, old)
            os.rename(tmp, export_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir
