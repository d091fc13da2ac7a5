"""Export a trained model as a Hugging Face folder (safetensors + config + tokenizer).

The folder loads with `transformers` (GPT2LMHeadModel or LlamaForCausalLM) and with
trainer.sample, which needs no transformers at all.
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


def to_hf_state_dict(model_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, Any]:
    """Our state dict in HF layout: same names, Conv1D transposed, tied head dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, t in model_state.items():
        if key == "lm_head.weight" and cfg.tie_embeddings:
            continue  # HF re-ties it from the embedding; safetensors rejects shared storage
        if cfg.arch == "gpt2" and is_conv1d_key(key):
            t = t.t()
        out[key] = t.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def hf_config(cfg: ModelConfig, eot_id: int) -> dict[str, Any]:
    """config.json contents for GPT2Config or LlamaConfig."""
    common = {
        "vocab_size": cfg.vocab_size,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }
    if cfg.arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": cfg.seq_len,
            "n_ctx": cfg.seq_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_inner": cfg.ff_dim,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            **common,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        **common,
    }


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
