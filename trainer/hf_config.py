"""The Hugging Face config.json of a model, both ways: GPT2Config, LlamaConfig, MixtralConfig.

Torch-free, like trainer.config: the API reads imported models' configs with it.
A mixture of experts is written as Mixtral. Mixtral has experts in every layer, so a model
with dense layers between them (moe.every_k_layers > 1) lists those in "mlp_only_layers"
(Qwen2-MoE's name); trainer.export writes each such MLP as num_experts identical experts,
which compute exactly the MLP whatever the router picks, and reading it back here restores
the dense layers.
"""

from __future__ import annotations

from typing import Any

from trainer.config import ModelConfig, MoEConfig


def hf_config(cfg: ModelConfig, eot_id: int) -> dict[str, Any]:
    """config.json contents for GPT2Config, LlamaConfig or (with experts) MixtralConfig."""
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
    llama = {
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
        "attention_dropout": 0.0,
        **common,
    }
    if cfg.moe is not None:
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            **llama,
            "sliding_window": None,
            "num_local_experts": cfg.moe.num_experts,
            "num_experts_per_tok": cfg.moe.top_k,
            "router_aux_loss_coef": cfg.moe.aux_loss_coef,
            "router_z_loss_coef": cfg.moe.router_z_loss_coef,
            "router_jitter_noise": 0.0,
            "output_router_logits": False,
            "mlp_only_layers": [i for i in range(cfg.n_layer) if not cfg.is_moe_layer(i)],
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **llama,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
    }


def _every_k_layers(n_layer: int, dense: list[int]) -> int:
    """The moe.every_k_layers whose dense layers are exactly `dense`."""
    for k in range(1, n_layer + 1):
        if [i for i in range(n_layer) if (i + 1) % k] == sorted(dense):
            return k
    raise ValueError(
        f"mlp_only_layers {dense} is not every layer but each k-th; such models are unsupported"
    )


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from a GPT2Config, LlamaConfig or MixtralConfig config.json."""
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
    if kind in ("llama", "mixtral"):
        d, n_head = hf["hidden_size"], hf["num_attention_heads"]
        if (hf.get("head_dim") or d // n_head) != d // n_head:
            raise ValueError(f"{kind} models with head_dim != hidden_size / heads are unsupported")
        # transformers 5 writes rope_parameters where earlier versions wrote rope_theta.
        rope = hf.get("rope_parameters") or {}
        if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            raise ValueError(f"{kind} models with rope_scaling are not supported yet")
        moe = None
        if kind == "mixtral":
            window = hf.get("sliding_window")
            if window is not None and window < hf["max_position_embeddings"]:
                raise ValueError(f"mixtral models with a sliding_window ({window}) are unsupported")
            n_layer = hf["num_hidden_layers"]
            moe = MoEConfig(
                num_experts=hf["num_local_experts"],
                top_k=hf["num_experts_per_tok"],
                every_k_layers=_every_k_layers(n_layer, hf.get("mlp_only_layers") or []),
                aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.01)),
                router_z_loss_coef=float(hf.get("router_z_loss_coef", 0.0)),
            )
        return ModelConfig(
            arch="llama",
            n_layer=hf["num_hidden_layers"],
            n_head=n_head,
            d_model=d,
            vocab_size=hf["vocab_size"],
            seq_len=hf["max_position_embeddings"],
            n_kv_head=hf.get("num_key_value_heads"),
            d_ff=hf["intermediate_size"],
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            moe=moe,
        )
    raise ValueError(f"unsupported model_type {kind!r}; expected 'gpt2', 'llama' or 'mixtral'")
