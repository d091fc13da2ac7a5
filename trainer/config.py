"""Run configuration for the trainer: typed dataclasses, presets and size arithmetic.

This module must stay torch-free: the API imports it to validate job specs and to show
parameter counts without loading torch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# Exit codes of `python -m trainer.train`; the node worker maps them to job transitions.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # SIGTERM received and a checkpoint was saved; resume later

Arch = Literal["gpt2", "llama"]


class ConfigError(ValueError):
    """A run configuration that cannot be used as given."""


@dataclass
class ModelConfig:
    """Architecture of a decoder-only language model."""

    arch: Arch
    n_layer: int
    n_head: int
    d_model: int
    vocab_size: int
    seq_len: int
    dropout: float = 0.0
    n_kv_head: int | None = None  # llama only; None means n_head (no grouped-query attention)
    d_ff: int | None = None  # None means 4*d_model (gpt2) or ~8/3*d_model (llama)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ("gpt2", "llama"):
            raise ConfigError(f"model.arch must be 'gpt2' or 'llama', got {self.arch!r}")
        for name in ("n_layer", "n_head", "d_model", "vocab_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1")
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.arch == "llama" and (self.d_model // self.n_head) % 2:
            raise ConfigError("llama head size (d_model / n_head) must be even for RoPE")
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads})"
            )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to n_head unless grouped-query attention)."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def ff_dim(self) -> int:
        """Hidden width of the MLP."""
        if self.d_ff is not None:
            return self.d_ff
        if self.arch == "gpt2":
            return 4 * self.d_model
        # SwiGLU has three matrices, so LLaMA shrinks the width to 2/3 of 4d to keep the
        # parameter count of a 4d GELU MLP; round up to a multiple of 64 for fast matmuls.
        return _round_up(8 * self.d_model // 3, 64)


@dataclass
class TrainingConfig:
    """Optimisation hyper-parameters, exactly the run.json "training" object."""

    max_steps: int = 2000
    seq_len: int = 64
    batch_size: int = 12  # sequences per optimizer step, summed over all ranks
    micro_batch_size: int = 12  # sequences per forward pass on one rank
    lr: float = 1e-3
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    dropout: float = 0.0
    eval_interval: int = 250
    eval_batches: int = 20
    checkpoint_interval: int = 500
    seed: int = 1337
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    # Recompute each block's activations in the backward pass instead of storing them:
    # about a third more compute for activation memory that no longer grows with depth.
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "seq_len",
            "batch_size",
            "micro_batch_size",
            "eval_interval",
            "eval_batches",
            "checkpoint_interval",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"training.{name} must be >= 1")
        if self.warmup_steps < 0 or self.lr < 0 or self.min_lr < 0 or self.grad_clip < 0:
            raise ConfigError("training.warmup_steps, lr, min_lr and grad_clip must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("training.dropout must be in [0, 1)")


@dataclass
class TokenRange:
    """Tokens [start, end) of one shard file."""

    path: str
    start: int
    end: int


@dataclass
class DataConfig:
    """Where the token shards are and how to read them."""

    dtype: Literal["uint16", "uint32"]
    eot_id: int
    train: list[TokenRange]
    val: list[TokenRange]
    format: Literal["tokens"] = "tokens"


@dataclass
class SFTDataConfig:
    """Folders written by trainer.sft_shards.write_sft_shards."""

    format: Literal["sft"]
    train: str
    val: str | None = None  # None: no validation loss

    def __post_init__(self) -> None:
        for name in ("train", "val"):
            path = getattr(self, name)
            if path is not None and not path.startswith("/"):
                raise ConfigError(f"data.{name} must be an absolute path, got {path!r}")


@dataclass
class ChatMessage:
    """One message of a conversation (see trainer.chat)."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass
class LoRAConfig:
    """Low-rank adapters (see trainer.lora for the module names per architecture)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the architecture's attention projections

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError("lora.rank must be >= 1")
        if self.alpha <= 0:
            raise ConfigError("lora.alpha must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora.dropout must be in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules must not be empty; leave it out for defaults")


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a base model on chat examples: the run.json "sft" object."""

    base_model_dir: str  # an HF folder: config.json, model.safetensors, tokenizer.json
    method: Literal["full", "lora"] = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    packing: bool = True  # several examples per row; False: one example per padded row
    epochs: int | None = None  # when set, max_steps is derived from the data
    eval_prompts: list[list[ChatMessage]] = field(default_factory=list)
    eval_max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if not self.base_model_dir.startswith("/"):
            raise ConfigError(
                f"sft.base_model_dir must be an absolute path, got {self.base_model_dir!r}"
            )
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("sft.epochs must be >= 1 (or null to train for max_steps)")
        if any(not prompt for prompt in self.eval_prompts):
            raise ConfigError("sft.eval_prompts must not hold an empty conversation")
        if self.eval_max_new_tokens < 1:
            raise ConfigError("sft.eval_max_new_tokens must be >= 1")


@dataclass
class DPOConfig:
    """Preference tuning on top of the "sft" section's base model: the run.json "dpo" object."""

    beta: float = 0.1  # how far the policy may move from the reference (higher: less far)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError("dpo.beta must be > 0")


@dataclass
class ResourcesConfig:
    """What the trainer runs on."""

    accelerator: Literal["cpu", "gpu", "auto"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    nodes: int = 1
    processes_per_node: int = 1
    # A collective waits this long for a peer before failing (a vanished host otherwise
    # hangs the survivors for the backend's default of 10 to 30 minutes).
    dist_timeout_seconds: float = 300.0


@dataclass
class RunConfig:
    """Everything one training attempt needs: the run.json contract."""

    tokenizer_path: str
    data: DataConfig | SFTDataConfig  # told apart by data.format ("tokens" by default)
    output_dir: str
    checkpoint_dir: str
    export_dir: str
    type: Literal["pretrain", "sft", "dpo"] = "pretrain"
    model: ModelConfig | None = None  # pretrain only; SFT takes it from sft.base_model_dir
    sft: SFTConfig | None = None  # sft and dpo: the base model and how to tune it
    dpo: DPOConfig | None = None  # dpo only
    training: TrainingConfig = field(default_factory=TrainingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    job_id: str = ""
    attempt: int = 1
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if (self.dpo is not None) != (self.type == "dpo"):
            raise ConfigError("the dpo section goes with type 'dpo', and type 'dpo' needs it")
        if self.type in ("sft", "dpo"):
            if self.sft is None:
                raise ConfigError(f"type {self.type!r} needs an 'sft' section")
            if self.model is not None:
                raise ConfigError(
                    f"model must be left out of {self.type} runs: it comes from sft.base_model_dir"
                )
            if not isinstance(self.data, SFTDataConfig):
                raise ConfigError(f"type {self.type!r} needs data.format 'sft'")
        else:
            if self.model is None:
                raise ConfigError("model is required for pretraining")
            if self.sft is not None or not isinstance(self.data, DataConfig):
                raise ConfigError("the sft section and data.format 'sft' need type 'sft' or 'dpo'")
        if self.model is not None and self.training.seq_len > self.model.seq_len:
            raise ConfigError(
                f"training.seq_len ({self.training.seq_len}) exceeds model.seq_len "
                f"({self.model.seq_len})"
            )
        if self.keep_checkpoints < 1:
            raise ConfigError("keep_checkpoints must be >= 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a RunConfig from parsed JSON, rejecting unknown or mistyped keys."""
        return _build(cls, data, "run")

    @classmethod
    def load(cls, path: str) -> RunConfig:
        """Read and validate a run.json file."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, the inverse of from_dict."""
        return dataclasses.asdict(self)


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check one JSON value against a type hint, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [t for t in options if t is not type(None)]
        if len(inner) > 1:
            return _build(_variant(inner, value, where), value, where)
        return _convert(inner[0], value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(repr(a) for a in typing.get_args(tp))
            raise ConfigError(f"{where}: must be one of {allowed}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, where)
    # bool is a subclass of int in Python, but `"n_layer": true` is a mistake, not a 1.
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _variant(options: list[Any], value: Any, where: str) -> Any:
    """The dataclass of a union whose "format" literal matches value's format key."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object")
    formats: list[str] = []
    for tp in options:
        default = {f.name: f.default for f in dataclasses.fields(tp)}["format"]
        allowed = typing.get_args(typing.get_type_hints(tp)["format"])
        formats += allowed
        if value.get("format", default) in allowed:
            return tp
    allowed_text = ", ".join(repr(f) for f in formats)
    raise ConfigError(f"{where}.format: must be one of {allowed_text}, got {value.get('format')!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


# Presets return only architecture fields; vocab_size and seq_len come from the job.
def _tiny() -> dict[str, Any]:
    return {"arch": "gpt2", "n_layer": 2, "n_head": 2, "d_model": 64}


def _tiny_llama() -> dict[str, Any]:
    return {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 64}


def _shakespeare() -> dict[str, Any]:
    return {"arch": "gpt2", "n_layer": 4, "n_head": 4, "d_model": 128}


def _gpt2_small() -> dict[str, Any]:
    return {"arch": "gpt2", "n_layer": 12, "n_head": 12, "d_model": 768}


def _gpt2_medium() -> dict[str, Any]:
    return {"arch": "gpt2", "n_layer": 24, "n_head": 16, "d_model": 1024}


def _llama_1b() -> dict[str, Any]:
    # The Llama 3.2 1B shape: 16 layers, 2048 wide, 32 query heads sharing 8 kv heads.
    return {
        "arch": "llama",
        "n_layer": 16,
        "n_head": 32,
        "d_model": 2048,
        "n_kv_head": 8,
        "d_ff": 8192,
        "rope_theta": 500000.0,
    }


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny": _tiny,
    "tiny-llama": _tiny_llama,
    "shakespeare": _shakespeare,
    "gpt2-small": _gpt2_small,
    "gpt2-medium": _gpt2_medium,
    "llama-1b": _llama_1b,
}


def param_count(cfg: ModelConfig) -> int:
    """Exact number of parameters of the model built from cfg (tied embeddings once)."""
    d, ff, v, n_layer = cfg.d_model, cfg.ff_dim, cfg.vocab_size, cfg.n_layer
    head = 0 if cfg.tie_embeddings else v * d
    if cfg.arch == "gpt2":
        attn = d * 3 * d + 3 * d + d * d + d  # fused qkv and output projection, with biases
        mlp = d * ff + ff + ff * d + d
        norms = 2 * 2 * d  # two LayerNorms with weight and bias
        return v * d + cfg.seq_len * d + n_layer * (attn + mlp + norms) + 2 * d + head
    kv = cfg.kv_heads * cfg.head_dim
    attn = d * d + 2 * d * kv + d * d
    mlp = 3 * d * ff
    norms = 2 * d  # two RMSNorms, weight only
    return v * d + n_layer * (attn + mlp + norms) + d + head


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6N + 12*L*d*T (PaLM appendix B, as in nanoGPT's MFU).

    6N counts forward (2N) and backward (4N) matmuls over the parameters; learned position
    embeddings are excluded because they are a lookup, not a matmul. 12*L*d*T adds the
    attention score and value products, which have no parameters. T defaults to the
    model's context length.
    """
    n = param_count(cfg)
    if cfg.arch == "gpt2":
        n -= cfg.seq_len * cfg.d_model
    t = seq_len if seq_len is not None else cfg.seq_len
    return float(6 * n + 12 * cfg.n_layer * cfg.d_model * t)


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


# ---------------------------------------------------------------------------- memory

# DEVICE_MEMORY: estimate_memory knows the job, not the hardware. The caller supplies the
# device's memory (the API takes it from the node's reported GPU memory) and compares it with
# the estimate's "total"; `fits` does that comparison.
GPU_RESERVED_BYTES = 1 << 30  # CUDA context, NCCL buffers and allocator fragmentation

_FP32 = 4


def _activation_elements(cfg: ModelConfig, compiled: bool) -> tuple[int, int]:
    """Saved-for-backward elements per token in one block: (residual-stream, compute dtype).

    Counted op by op from what autograd keeps for our model.py:
      gpt2:  residual stream into ln_1 and ln_2 (2d); c_attn input (d), the fused q|k|v
             output SDPA keeps (3d), SDPA output (d), its contiguous copy for c_proj (d),
             c_fc input (d), GELU input and output (2 ff)                  -> 7d + 2ff
      llama: per RMSNorm its input and the normalised tensor (2 x 2d); the two norm
             outputs (2d), rotated q and k plus v after any GQA repeat (3d), SDPA output
             (d), o_proj input (d), gate, SiLU, up and their product (4 ff) -> 7d + 4ff
    Under torch.compile the pointwise activations are recomputed in the backward pass
    rather than saved (inductor's partitioner keeps the matmul outputs only): GELU's output
    and SiLU's output and product drop out, leaving 1 ff (gpt2) and 2 ff (llama).
    """
    d, ff = cfg.d_model, cfg.ff_dim
    if cfg.arch == "gpt2":
        return 2 * d, 7 * d + (1 if compiled else 2) * ff
    return 4 * d, 7 * d + (2 if compiled else 4) * ff


def estimate_memory(
    model_cfg: ModelConfig,
    training: TrainingConfig,
    world_size: int,
    strategy: str,
    accelerator: str,
) -> dict[str, int]:
    """Bytes per device for a training job: weights, gradients, AdamW, activations, total.

    Weights, gradients and both AdamW moments are fp32 (4 bytes x N parameters each, 16N
    together); FSDP shards all three over world_size, DDP replicates them. bf16 runs
    ("auto" or "gpu" accelerator with precision auto/bf16) add the half-precision weight
    copies the forward pass keeps (2N under DDP autocast; under FSDP two unsharded blocks
    in flight, the one computing and the one prefetched, plus their fp32 gradients).

    Activations are per micro-batch of B sequences of T tokens, for L blocks:
      without checkpointing  B*T*(L*(s*r + e*c + m) + head)
      with checkpointing     B*T*(L*4d + (s*r + e*c + m) + head)
    where (r, c) are the saved elements per token of one block (`_activation_elements`),
    e is 2 under bf16 and 4 otherwise, s is e under FSDP and 4 otherwise, m is 2d one-byte
    dropout masks when dropout > 0, and
    head is the fp32 log-softmax output plus its gradient at the start of the backward pass
    (8V) plus the final norm's saved tensors. With checkpointing each block keeps only its
    input (d, in the residual dtype) and one block at a time is recomputed during the backward pass.
    Attention never materialises T x T scores: SDPA's fused kernels keep only q, k, v and
    the output. GPUs add GPU_RESERVED_BYTES for the CUDA context and fragmentation.
    """
    if world_size < 1:
        raise ConfigError("world_size must be >= 1")
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if accelerator not in ("cpu", "gpu", "auto"):
        raise ConfigError(f"accelerator must be 'cpu', 'gpu' or 'auto', got {accelerator!r}")
    on_gpu = accelerator != "cpu"  # "auto" is checked against a GPU: the worst case
    bf16 = training.precision == "bf16" or (training.precision == "auto" and on_gpu)
    e = 2 if bf16 else _FP32
    n = param_count(model_cfg)
    shards = world_size if strategy == "fsdp" else 1
    sharded = -(-n // shards) * _FP32  # ceil: FSDP pads every parameter to divide evenly

    d, v, n_layer = model_cfg.d_model, model_cfg.vocab_size, model_cfg.n_layer
    block = (n - v * d * (1 if model_cfg.tie_embeddings else 2)) // max(1, n_layer)
    if not bf16:
        working = 0
    elif strategy == "fsdp":
        working = 2 * block * (2 + _FP32)  # two gathered bf16 blocks and their fp32 grads
    else:
        working = 2 * n  # autocast's bf16 weight copies, kept for the backward pass

    r, c = _activation_elements(model_cfg, training.compile and on_gpu)
    masks = 2 * d if training.dropout > 0 else 0
    # Autocast keeps the residual stream in fp32; FSDP's bf16 parameters make it bf16.
    residual = e if strategy == "fsdp" else _FP32
    per_layer = residual * r + e * c + masks
    final_norm = (2 if model_cfg.arch == "gpt2" else 3) * d * _FP32 + d * e
    head = 2 * v * _FP32 + final_norm
    tokens = training.micro_batch_size * training.seq_len
    act_full = tokens * (n_layer * per_layer + head)
    act_ckpt = tokens * (n_layer * d * residual + per_layer + head)
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
