"""Run configuration for the trainer: typed dataclasses, validated by pydantic, and presets.

This module must stay torch-free: the API imports it to validate job specs without loading
torch. Sizes (parameters, FLOPs, memory) live in trainer.sizing; the Hugging Face
config.json mapping in trainer.hf_config.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import field
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
)
from pydantic import model_validator as check
from pydantic.dataclasses import dataclass

# Exit codes of `python -m trainer.train`; the node worker maps them to job transitions.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_PREEMPTED = 75  # SIGTERM received and a checkpoint was saved; resume later

Arch = Literal["gpt2", "llama"]
# ddp: replicas; fsdp: parameters sharded over the ranks; tp: each block's matrices split
# over tensor_parallel_size ranks (replicas across groups of them); fsdp+tp: tensor parallel
# within a group, FSDP shards across the groups.
Strategy = Literal["ddp", "fsdp", "tp", "fsdp+tp"]
TENSOR_PARALLEL = ("tp", "fsdp+tp")

# Unknown keys are errors, and scalars are strict: `"n_layer": "2"` or `true` is a mistake,
# not a 2 or a 1. Nested sections may be given as objects (dicts) or as dataclasses.
_STRICT = ConfigDict(extra="forbid")

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an int is a float too
Positive = Annotated[int, Strict(), Field(ge=1)]
NonNegative = Annotated[float, Strict(), Field(ge=0.0)]
Rate = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]  # dropout probabilities


class ConfigError(ValueError):
    """A run configuration that cannot be used as given."""


@dataclass(config=_STRICT)
class MoEConfig:
    """Mixture-of-experts MLPs: a token-choice top-k router over num_experts SwiGLU experts."""

    num_experts: Annotated[int, Strict(), Field(ge=1, le=1024)] = 8
    top_k: Positive = 2  # experts each token is sent to
    every_k_layers: Positive = 1  # layer i is a MoE layer when (i + 1) % every_k_layers == 0
    aux_loss_coef: NonNegative = 0.01  # weight of the load-balancing loss (Switch Transformer)
    router_z_loss_coef: NonNegative = 0.0  # weight of the router z-loss (ST-MoE); 0 is off

    @check(mode="after")
    def _top_k_fits(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise ValueError(
                f"moe.top_k ({self.top_k}) exceeds moe.num_experts ({self.num_experts})"
            )
        return self


@dataclass(config=_STRICT)
class ModelConfig:
    """Architecture of a decoder-only language model."""

    arch: Arch
    n_layer: Positive
    n_head: Positive
    d_model: Positive
    vocab_size: Positive
    seq_len: Positive
    dropout: Rate = 0.0
    n_kv_head: Positive | None = None  # llama only; None means n_head (no grouped-query attention)
    d_ff: Positive | None = None  # None means 4*d_model (gpt2) or ~8/3*d_model (llama)
    rope_theta: Annotated[float, Strict(), Field(gt=0.0)] = 10000.0
    norm_eps: Annotated[float, Strict(), Field(gt=0.0)] = 1e-5
    tie_embeddings: StrictBool = True
    moe: MoEConfig | None = None  # llama only; None is a dense model
    # GPT-2's init: the projections into the residual stream at 0.02/sqrt(2 n_layer), the
    # rest at 0.02. False: 0.02 everywhere (better for very shallow models: bench/RESULTS.md).
    scale_residual_init: StrictBool = True

    @check(mode="after")
    def _shapes_agree(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.arch == "llama" and (self.d_model // self.n_head) % 2:
            raise ValueError("llama head size (d_model / n_head) must be even for RoPE")
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"model.n_head ({self.n_head}) must be divisible by n_kv_head ({self.kv_heads})"
            )
        if self.moe is not None:
            if self.arch != "llama":
                raise ValueError(f"model.moe needs arch 'llama', got {self.arch!r}")
            if self.moe.every_k_layers > self.n_layer:
                raise ValueError(
                    f"model.moe.every_k_layers ({self.moe.every_k_layers}) exceeds n_layer "
                    f"({self.n_layer}): no layer would have experts"
                )
        return self

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
        """Hidden width of the MLP (of each expert in a MoE layer)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.arch == "gpt2":
            return 4 * self.d_model
        # SwiGLU has three matrices, so LLaMA shrinks the width to 2/3 of 4d to keep the
        # parameter count of a 4d GELU MLP; round up to a multiple of 64 for fast matmuls.
        return _round_up(8 * self.d_model // 3, 64)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block `layer` (0-based) has experts instead of one MLP."""
        return self.moe is not None and (layer + 1) % self.moe.every_k_layers == 0

    @property
    def moe_layers(self) -> list[int]:
        """Indices of the blocks with experts (empty for a dense model)."""
        return [i for i in range(self.n_layer) if self.is_moe_layer(i)]


@dataclass(config=_STRICT)
class TrainingConfig:
    """Optimisation hyper-parameters, exactly the run.json "training" object."""

    max_steps: Positive = 2000
    seq_len: Positive = 64
    batch_size: Positive = 12  # sequences per optimizer step, summed over all ranks
    micro_batch_size: Positive = 12  # sequences per forward pass on one rank
    lr: NonNegative = 1e-3
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: Annotated[int, Strict(), Field(ge=0)] = 100
    min_lr: NonNegative = 1e-4
    weight_decay: Float = 0.1
    adam_beta1: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.9
    adam_beta2: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.95
    grad_clip: NonNegative = 1.0  # 0 disables clipping
    dropout: Rate = 0.0
    eval_interval: Positive = 250
    # The validation set: eval_batches x batch_size sequences, whatever the ranks and micro-batches.
    eval_batches: Positive = 20
    checkpoint_interval: Positive = 500
    seed: Int = 1337
    # "auto": bf16 where the device multiplies it natively (CUDA with bf16 support; CPUs
    # with AVX512-BF16 or AMX-BF16), fp32 elsewhere (trainer.parallel.computes_in_bf16).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # "auto": compile on CUDA, where it pays for its compile time; eager on CPU, where a
    # short run's compile time exceeds what it saves (bench/RESULTS.md, "Compile by default").
    compile: StrictBool | Literal["auto"] = "auto"
    # The same bits on every run, resumed or not: torch's deterministic algorithms, which
    # also keep torch.compile from summing gradients with atomic adds (the embeddings').
    deterministic: StrictBool = False
    # Recompute each block's activations in the backward pass instead of storing them:
    # about a third more compute for activation memory that no longer grows with depth.
    activation_checkpointing: StrictBool = False

    @property
    def betas(self) -> tuple[float, float]:
        """AdamW's (beta1, beta2)."""
        return self.adam_beta1, self.adam_beta2

    def compiles(self, device_type: str) -> bool:
        """Whether a run on this kind of device compiles its model (and loss)."""
        return device_type == "cuda" if self.compile == "auto" else bool(self.compile)


@dataclass(config=_STRICT)
class TokenRange:
    """Tokens [start, end) of one shard file."""

    path: StrictStr
    start: Int
    end: Int


@dataclass(config=_STRICT)
class DataConfig:
    """Where the token shards are and how to read them."""

    dtype: Literal["uint16", "uint32"]
    eot_id: Int
    train: list[TokenRange]
    val: list[TokenRange]
    format: Literal["tokens"] = "tokens"


@dataclass(config=_STRICT)
class SFTDataConfig:
    """Folders written by trainer.sft_shards.write_sft_shards."""

    format: Literal["sft"]
    train: StrictStr
    val: StrictStr | None = None  # None: no validation loss

    @check(mode="after")
    def _absolute_paths(self) -> SFTDataConfig:
        for name in ("train", "val"):
            path = getattr(self, name)
            if path is not None and not path.startswith("/"):
                raise ValueError(f"data.{name} must be an absolute path, got {path!r}")
        return self


@dataclass(config=_STRICT)
class ChatMessage:
    """One message of a conversation (see trainer.chat)."""

    role: Literal["system", "user", "assistant"]
    content: StrictStr


@dataclass(config=_STRICT)
class LoRAConfig:
    """Low-rank adapters (see trainer.lora for the module names per architecture)."""

    rank: Positive = 8
    alpha: Annotated[float, Strict(), Field(gt=0.0)] = 16.0
    dropout: Rate = 0.0
    # None: the architecture's attention projections; an empty list is a mistake.
    target_modules: Annotated[list[StrictStr], Field(min_length=1)] | None = None


@dataclass(config=_STRICT)
class SFTConfig:
    """Supervised fine-tuning of a base model on chat examples: the run.json "sft" object."""

    base_model_dir: StrictStr  # an HF folder: config.json, model.safetensors, tokenizer.json
    method: Literal["full", "lora"] = "full"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    packing: StrictBool = True  # several examples per row; False: one example per padded row
    epochs: Positive | None = None  # when set, max_steps is derived from the data
    eval_prompts: list[Annotated[list[ChatMessage], Field(min_length=1)]] = field(
        default_factory=list
    )
    eval_max_new_tokens: Positive = 64

    @check(mode="after")
    def _absolute_base(self) -> SFTConfig:
        if not self.base_model_dir.startswith("/"):
            raise ValueError(
                f"sft.base_model_dir must be an absolute path, got {self.base_model_dir!r}"
            )
        return self


@dataclass(config=_STRICT)
class DPOConfig:
    """Preference tuning on top of the "sft" section's base model: the run.json "dpo" object."""

    beta: Annotated[float, Strict(), Field(gt=0.0)] = 0.1  # higher: the policy moves less far


def tensor_parallel_problem(model: ModelConfig, size: int) -> tuple[str, str] | None:
    """Why `model` cannot be split over `size` tensor-parallel ranks, as (field, message);
    None when it can. Attention heads and the MLP's hidden units are split, so each must
    divide evenly; only the llama blocks have a plan, and experts none yet."""
    where = f"resources.tensor_parallel_size ({size})"
    if model.arch != "llama":
        return "model.arch", (
            f"model.arch {model.arch!r} has no tensor-parallel plan; strategies 'tp' and "
            "'fsdp+tp' need arch 'llama' (use 'ddp' or 'fsdp' for gpt2)"
        )
    if model.moe is not None:
        return "model.moe", (
            "a mixture of experts (model.moe) cannot be split by tensor parallelism yet; "
            "use strategy 'ddp' or 'fsdp'"
        )
    for field_name, value in (
        ("model.n_head", model.n_head),
        ("model.n_kv_head", model.kv_heads),
        ("model.d_ff", model.ff_dim),
    ):
        if value % size:
            what = "the MLP hidden size model.d_ff" if field_name == "model.d_ff" else field_name
            return field_name, f"{what} ({value}) must be divisible by {where}"
    return None


def layout_problem(
    strategy: str, tensor_parallel_size: int | None, processes: int
) -> tuple[str, str] | None:
    """Why a tensor-parallel size does not fit the strategy and the number of processes,
    as (field, message); None when it fits."""
    if tensor_parallel_size is None:
        return None
    if strategy not in TENSOR_PARALLEL:
        if tensor_parallel_size > 1:
            return "resources.tensor_parallel_size", (
                f"resources.tensor_parallel_size ({tensor_parallel_size}) needs "
                f"resources.strategy 'tp' or 'fsdp+tp', got {strategy!r}"
            )
        return None
    if processes % tensor_parallel_size:
        return "resources.tensor_parallel_size", (
            f"resources.tensor_parallel_size ({tensor_parallel_size}) must divide the number of "
            f"processes (nodes x processes_per_node = {processes})"
        )
    return None


@dataclass(config=_STRICT)
class ResourcesConfig:
    """What the trainer runs on."""

    accelerator: Literal["cpu", "gpu", "auto"] = "auto"
    strategy: Strategy = "ddp"
    nodes: Positive = 1
    processes_per_node: Positive = 1
    # Ranks that split each block under strategy tp or fsdp+tp; None: the processes on a
    # node (torchrun's LOCAL_WORLD_SIZE), so tensor parallelism stays within a node.
    tensor_parallel_size: Positive | None = None
    # A collective waits this long for a peer before failing (a vanished host otherwise
    # hangs the survivors for the backend's default of 10 to 30 minutes).
    dist_timeout_seconds: Annotated[float, Strict(), Field(gt=0.0)] = 300.0

    @check(mode="after")
    def _layout_fits(self) -> ResourcesConfig:
        problem = layout_problem(
            self.strategy, self.tensor_parallel_size, self.nodes * self.processes_per_node
        )
        if problem is not None:
            raise ValueError(problem[1])
        return self

    @property
    def tensor_parallel(self) -> bool:
        """Whether the strategy splits blocks over ranks (tp or fsdp+tp)."""
        return self.strategy in TENSOR_PARALLEL


def _data_format(value: Any) -> str:
    """Which data section a run.json holds: its "format" ("tokens" when left out)."""
    if isinstance(value, dict):
        return str(value.get("format", "tokens"))
    return str(getattr(value, "format", "tokens"))


Data = Annotated[
    Annotated[DataConfig, Tag("tokens")] | Annotated[SFTDataConfig, Tag("sft")],
    Discriminator(_data_format),
]


@dataclass(config=_STRICT)
class RunConfig:
    """Everything one training attempt needs: the run.json contract."""

    tokenizer_path: StrictStr
    data: Data  # told apart by data.format ("tokens" by default)
    output_dir: StrictStr
    checkpoint_dir: StrictStr
    export_dir: StrictStr
    type: Literal["pretrain", "sft", "dpo"] = "pretrain"
    model: ModelConfig | None = None  # pretrain only; SFT takes it from sft.base_model_dir
    sft: SFTConfig | None = None  # sft and dpo: the base model and how to tune it
    dpo: DPOConfig | None = None  # dpo only
    training: TrainingConfig = field(default_factory=TrainingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    job_id: StrictStr = ""
    attempt: Int = 1
    keep_checkpoints: Positive = 3

    @check(mode="after")
    def _parts_agree(self) -> RunConfig:
        if (self.dpo is not None) != (self.type == "dpo"):
            raise ValueError("the dpo section goes with type 'dpo', and type 'dpo' needs it")
        if self.type in ("sft", "dpo"):
            if self.sft is None:
                raise ValueError(f"type {self.type!r} needs an 'sft' section")
            if self.model is not None:
                raise ValueError(
                    f"model must be left out of {self.type} runs: it comes from sft.base_model_dir"
                )
            if not isinstance(self.data, SFTDataConfig):
                raise ValueError(f"type {self.type!r} needs data.format 'sft'")
        else:
            if self.model is None:
                raise ValueError("model is required for pretraining")
            if self.sft is not None or not isinstance(self.data, DataConfig):
                raise ValueError("the sft section and data.format 'sft' need type 'sft' or 'dpo'")
        res = self.resources
        if self.model is not None and res.tensor_parallel:
            size = res.tensor_parallel_size or res.processes_per_node
            problem = tensor_parallel_problem(self.model, size)
            if problem is not None:
                raise ValueError(problem[1])
        if self.model is not None and self.training.seq_len > self.model.seq_len:
            raise ValueError(
                f"training.seq_len ({self.training.seq_len}) exceeds model.seq_len "
                f"({self.model.seq_len})"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a RunConfig from parsed JSON, rejecting unknown or mistyped keys."""
        if not isinstance(data, dict):
            raise ConfigError("run: expected an object")
        try:
            return _run_adapter().validate_python(data)
        except ValidationError as e:
            raise ConfigError(describe(e, "run")) from e

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


@cache
def _run_adapter() -> TypeAdapter[RunConfig]:
    return TypeAdapter(RunConfig)


def describe(error: ValidationError, where: str) -> str:
    """One line per problem, each naming the field (as a dotted path) and the value."""
    lines = []
    for err in error.errors(include_url=False):
        loc = ".".join([where, *(str(p) for p in err["loc"])])
        kind, value = err["type"], err.get("input")
        if kind == "unexpected_keyword_argument":
            lines.append(f"{loc}: unknown key {err['loc'][-1]!r}")
        elif kind == "missing":
            lines.append(f"{loc}: missing required key {err['loc'][-1]!r}")
        elif kind == "value_error":  # a cross-field check, whose message names the values
            lines.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{loc}: {err['msg']}, got {value!r}")
    return "; ".join(lines)


def _round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


# Presets return only architecture fields; vocab_size and seq_len come from the job.
def _tiny() -> dict[str, Any]:
    return {"arch": "gpt2", "n_layer": 2, "n_head": 2, "d_model": 64}


def _tiny_llama() -> dict[str, Any]:
    return {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 64}


def _tiny_moe() -> dict[str, Any]:
    return {
        "arch": "llama",
        "n_layer": 2,
        "n_head": 2,
        "d_model": 64,
        "moe": {"num_experts": 4, "top_k": 2},
    }


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
    "tiny-moe": _tiny_moe,
    "shakespeare": _shakespeare,
    "gpt2-small": _gpt2_small,
    "gpt2-medium": _gpt2_medium,
    "llama-1b": _llama_1b,
}
