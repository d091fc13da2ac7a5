"""Sizes of a model and a training job: parameters, FLOPs per token, memory per device.

Torch-free, like trainer.config: the API sizes jobs with it before any node is involved.
"""

from __future__ import annotations

import dataclasses

from trainer.config import TENSOR_PARALLEL, ConfigError, ModelConfig, TrainingConfig


def _mlp_params(cfg: ModelConfig, layer: int, *, active: bool = False) -> int:
    """Parameters of block `layer`'s MLP (its experts and router in a MoE layer).

    active counts only what one token uses: top_k experts and the router.
    """
    d, ff = cfg.d_model, cfg.ff_dim
    if cfg.arch == "gpt2":
        return d * ff + ff + ff * d + d
    if cfg.moe is None or not cfg.is_moe_layer(layer):
        return 3 * d * ff
    experts = cfg.moe.top_k if active else cfg.moe.num_experts
    return experts * 3 * d * ff + d * cfg.moe.num_experts  # SwiGLU experts and the router


def _block_params(cfg: ModelConfig, layer: int, *, active: bool = False) -> int:
    """Parameters of one transformer block."""
    d = cfg.d_model
    mlp = _mlp_params(cfg, layer, active=active)
    if cfg.arch == "gpt2":
        attn = d * 3 * d + 3 * d + d * d + d  # fused qkv and output projection, with biases
        return attn + mlp + 2 * 2 * d  # two LayerNorms with weight and bias
    kv = cfg.kv_heads * cfg.head_dim
    attn = d * d + 2 * d * kv + d * d
    return attn + mlp + 2 * d  # two RMSNorms, weight only


def _split_block_params(cfg: ModelConfig, layer: int) -> int:
    """Parameters of block `layer` that tensor parallelism splits: the attention and MLP
    projections of a dense llama block (its norms stay whole on every rank)."""
    if cfg.arch != "llama" or cfg.is_moe_layer(layer):
        return 0
    return _block_params(cfg, layer) - 2 * cfg.d_model


def param_count(cfg: ModelConfig, *, active: bool = False) -> int:
    """Exact number of parameters of the model built from cfg (tied embeddings once).

    active counts, for a mixture of experts, the parameters one token passes through.
    """
    d, v = cfg.d_model, cfg.vocab_size
    head = 0 if cfg.tie_embeddings else v * d
    blocks = sum(_block_params(cfg, i, active=active) for i in range(cfg.n_layer))
    if cfg.arch == "gpt2":
        return v * d + cfg.seq_len * d + blocks + 2 * d + head
    return v * d + blocks + d + head


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N + 12*L*d*T (PaLM appendix B, as in nanoGPT's MFU).

    6N counts forward (2N) and backward (4N) matmuls over the parameters; learned position
    embeddings are excluded because they are a lookup, not a matmul. A mixture of experts
    counts the parameters a token is routed through (top_k experts), not all of them.
    12*L*d*T adds the attention score and value products, which have no parameters. T
    defaults to the model's context length.
    """
    n = param_count(cfg, active=True)
    if cfg.arch == "gpt2":
        n -= cfg.seq_len * cfg.d_model
    t = seq_len if seq_len is not None else cfg.seq_len
    return float(6 * n + 12 * cfg.n_layer * cfg.d_model * t)


# ---------------------------------------------------------------------------- memory

# DEVICE_MEMORY: estimate_memory knows the job, not the hardware. The caller supplies the
# device's memory (the API takes it from the node's reported GPU memory) and compares it with
# the estimate's "total"; `fits` does that comparison.
GPU_RESERVED_BYTES = 1 << 30  # CUDA context, NCCL buffers and allocator fragmentation

_FP32 = 4


def _activation_elements(
    cfg: ModelConfig, compiled: bool, layer: int = 0, tp: int = 1
) -> tuple[int, int]:
    """Saved-for-backward elements per token in one block: (residual-stream, compute dtype).

    Counted op by op from what autograd keeps for our model.py:
      gpt2:  residual stream into ln_1 and ln_2 (2d); c_attn input (d), the fused q|k|v
             output SDPA keeps (3d), SDPA output (d), its contiguous copy for c_proj (d),
             c_fc input (d), GELU input and output (2 ff)                  -> 7d + 2ff
      llama: per RMSNorm its input and the normalised tensor (2 x 2d); the two norm
             outputs (2d), rotated q and k plus v after any GQA repeat (3d), SDPA output
             (d), o_proj input (d), gate, SiLU, up and their product (4 ff) -> 7d + 4ff
      MoE:   a token goes through top_k experts, each keeping the four ff-wide tensors
             (4k ff), plus its copy in the experts' input buffer and the experts' output
             before weighting (2k d), plus the router's logits and probabilities (2E)
    Under torch.compile the pointwise activations are recomputed in the backward pass
    rather than saved (inductor's partitioner keeps the matmul outputs only): GELU's output
    and SiLU's output and product drop out, leaving 1 ff (gpt2) and 2 ff (llama).
    Tensor parallelism over tp ranks leaves the residual stream and the norm outputs
    whole and splits the rest of a llama block: 2d + (5d + 4ff) / tp.
    """
    d, ff = cfg.d_model, cfg.ff_dim
    if cfg.arch == "gpt2":
        return 2 * d, 7 * d + (1 if compiled else 2) * ff
    per_ff = 2 if compiled else 4
    if cfg.moe is not None and cfg.is_moe_layer(layer):
        k = cfg.moe.top_k
        return 4 * d, 7 * d + k * per_ff * ff + 2 * k * d + 2 * cfg.moe.num_experts
    return 4 * d, 2 * d + (5 * d + per_ff * ff) // tp


def estimate_memory(
    model_cfg: ModelConfig,
    training: TrainingConfig,
    world_size: int,
    strategy: str,
    accelerator: str,
    *,
    tensor_parallel_size: int = 1,
) -> dict[str, int]:
    """Bytes per device for a training job: weights, gradients, AdamW, activations, total.

    Weights, gradients and both AdamW moments are fp32 (4 bytes x N parameters each, 16N
    together); FSDP shards all three over world_size, DDP replicates them. Under
    strategies tp and fsdp+tp, N counts a rank's share: the attention and MLP
    projections divided by tensor_parallel_size, embeddings, norms and head whole; fsdp+tp
    then shards that over the world_size / tensor_parallel_size data-parallel groups. bf16 runs
    (precision bf16, or auto on a GPU) add the half-precision weight copies the forward
    pass keeps (2N under DDP autocast; under FSDP two unsharded blocks in flight, the one
    computing and the one prefetched, plus their fp32 gradients). Precision auto on a CPU
    is bf16 on some processors and fp32 on others: it is sized as whichever needs more.

    Activations are per micro-batch of B sequences of T tokens, for L blocks:
      without checkpointing  B*T*(L*(s*r + e*c + m) + head)
      with checkpointing     B*T*(L*4d + (s*r + e*c + m) + head)
    where (r, c) are the saved elements per token of one block (`_activation_elements`),
    e is 2 under bf16 and 4 otherwise, s is e under FSDP and 4 otherwise, m is 2d one-byte
    dropout masks when dropout > 0, and
    head is what the cross-entropy keeps plus the logits' gradient at the start of the
    backward pass, plus the final norm's saved tensors: eager, the fp32 log-softmax output
    and its gradient (8V); compiled, the fused cross-entropy keeps the logits themselves, in
    the compute dtype, and their gradient is of that dtype too (2eV). With checkpointing
    each block keeps only its input (d, in the residual dtype) and one block at a time is
    recomputed during the backward pass.
    Attention never materialises T x T scores: SDPA's fused kernels keep only q, k, v and
    the output (in fp32 under bf16 on a CPU, where attention runs in fp32: 8d more bytes a
    token per block). GPUs add GPU_RESERVED_BYTES for the CUDA context and fragmentation.

    A mixture of experts holds every expert on every device (no expert parallelism yet):
    N counts all experts, a MoE block's activations count top_k experts per token (the
    routing is assumed balanced), and FSDP's two blocks in flight are the largest ones.
    """
    if world_size < 1:
        raise ConfigError("world_size must be >= 1")
    if strategy not in ("ddp", "fsdp", *TENSOR_PARALLEL):
        raise ConfigError(f"strategy must be 'ddp', 'fsdp', 'tp' or 'fsdp+tp', got {strategy!r}")
    tp = tensor_parallel_size if strategy in TENSOR_PARALLEL else 1
    if tp < 1 or world_size % tp:
        raise ConfigError(
            f"tensor_parallel_size ({tensor_parallel_size}) must divide world_size ({world_size})"
        )
    fsdp = strategy in ("fsdp", "fsdp+tp")
    if accelerator not in ("cpu", "gpu", "auto"):
        raise ConfigError(f"accelerator must be 'cpu', 'gpu' or 'auto', got {accelerator!r}")
    on_gpu = accelerator != "cpu"  # "auto" is checked against a GPU: the worst case
    if accelerator == "cpu" and training.precision == "auto":
        # bf16 on a CPU that multiplies it natively, fp32 on others: the larger of the two.
        both = [
            estimate_memory(
                model_cfg,
                dataclasses.replace(training, precision=precision),
                world_size,
                strategy,
                accelerator,
                tensor_parallel_size=tensor_parallel_size,
            )
            for precision in ("fp32", "bf16")
        ]
        return max(both, key=lambda estimate: estimate["total"])
    bf16 = training.precision == "bf16" or (training.precision == "auto" and on_gpu)
    e = 2 if bf16 else _FP32
    d, v, n_layer = model_cfg.d_model, model_cfg.vocab_size, model_cfg.n_layer
    split = [_split_block_params(model_cfg, i) for i in range(n_layer)]
    # One rank's parameters: its share of the split projections, the rest whole.
    n = param_count(model_cfg) - sum(split) + sum(split) // tp
    shards = world_size // tp if fsdp else 1
    sharded = -(-n // shards) * _FP32  # ceil: FSDP pads every parameter to divide evenly

    if model_cfg.moe is None:
        block = (n - v * d * (1 if model_cfg.tie_embeddings else 2)) // max(1, n_layer)
    else:
        block = max(_block_params(model_cfg, i) for i in range(n_layer))
    if not bf16:
        working = 0
    elif fsdp:
        working = 2 * block * (2 + _FP32)  # two gathered bf16 blocks and their fp32 grads
    else:
        working = 2 * n  # autocast's bf16 weight copies, kept for the backward pass

    compiled = on_gpu and training.compiles("cuda")  # on the CPU its effect is not modelled
    masks = 2 * d if training.dropout > 0 else 0
    # Autocast keeps the residual stream in fp32; FSDP's bf16 parameters make it bf16.
    residual = e if fsdp else _FP32
    # On a CPU, bf16 attention runs in fp32 (trainer.model.causal_attention): SDPA keeps its
    # q, k, v and output (4d of the compute-dtype elements) at 4 bytes instead of 2.
    upcast = 4 * d // tp * (_FP32 - e) if bf16 and not on_gpu else 0
    per_block = []
    for layer in range(n_layer):
        r, c = _activation_elements(model_cfg, compiled, layer, tp)
        per_block.append(residual * r + e * c + masks + upcast)
    final_norm = (2 if model_cfg.arch == "gpt2" else 3) * d * _FP32 + d * e
    head = 2 * v * (e if compiled else _FP32) + final_norm
    tokens = training.micro_batch_size * training.seq_len
    act_full = tokens * (sum(per_block) + head)
    act_ckpt = tokens * (n_layer * d * residual + max(per_block) + head)
    activations = act_ckpt if training.activation_checkpointing else act_full
    overhead = GPU_RESERVED_BYTES if on_gpu else 0
    out = {
        "parameters": sharded,
        "gradients": sharded,
        "optimizer": 2 * sharded,  # AdamW exp_avg and exp_avg_sq
        "working_weights": working,
        "activations": activations,
        "activations_no_checkpointing": act_full,
        "activations_checkpointing": act_ckpt,
        "overhead": overhead,
    }
    out["total"] = 4 * sharded + working + activations + overhead
    return out


def fits(estimate: dict[str, int], device_memory: int) -> bool:
    """Whether an estimate_memory result fits a device with device_memory bytes."""
    return estimate["total"] <= device_memory
