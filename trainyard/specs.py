"""The JobSpec: what a user asks for, strictly validated and resolved to concrete values.

A stored job keeps the resolved spec (every default filled in), so it always says exactly
what it ran.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from trainer.config import (
    PRESETS,
    TENSOR_PARALLEL,
    ModelConfig,
    MoEConfig,
    layout_problem,
    tensor_parallel_problem,
)

BYTE_VOCAB = 257  # 256 byte values and <|endoftext|>
NAME_LENGTH = 200  # the names' columns
DEFAULT_PRIORITY = 50  # of a job that gives none (1 to 99, lower runs first)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: str) -> str:
    """A name without NUL or other control characters (they have no place in a label)."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(
            f"control character {found.group()!r} at position {found.start()} is not allowed"
        )
    return value


ObjectId = Annotated[str, Field(max_length=64, pattern=r"^[a-z]+_[0-9a-z]+$")]
Name = Annotated[str, Field(max_length=NAME_LENGTH), AfterValidator(check_name)]


class Strict(BaseModel):
    """A request model that rejects fields it does not know, and Infinity or NaN anywhere."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ValidationSpec(Strict):
    """Hold out a fraction of the training data, or validate on another dataset."""

    fraction: float | None = Field(None, gt=0.0, lt=0.5)
    dataset_id: ObjectId | None = None

    @model_validator(mode="after")
    def _one(self) -> ValidationSpec:
        if self.fraction is not None and self.dataset_id is not None:
            raise ValueError("give either fraction or dataset_id, not both")
        if self.dataset_id is None and self.fraction is None:
            self.fraction = 0.05
        return self


class TokenizerSpec(Strict):
    """`byte` (256 bytes and an end-of-text token), a BPE trained on the job's dataset, or
    a tokenizer uploaded through `POST /v1/tokenizers` (give its `tokenizer_id`)."""

    type: Literal["byte", "bpe", "uploaded", "model"] | None = None
    vocab_size: int | None = Field(None, ge=257, le=1_048_576)
    tokenizer_id: ObjectId | None = None

    @model_validator(mode="after")
    def _size(self) -> TokenizerSpec:
        if self.type == "model":
            return self  # the base model's own tokenizer (fine-tuning); filled in on create
        if self.tokenizer_id is not None:
            if self.type not in (None, "uploaded"):
                raise ValueError("tokenizer_id goes with type 'uploaded' (or no type)")
            self.type = "uploaded"
            return self  # the vocabulary size is the uploaded tokenizer's
        self.type = self.type or "byte"
        if self.type == "uploaded":
            raise ValueError("an uploaded tokenizer needs its tokenizer_id")
        if self.type == "byte":
            if self.vocab_size not in (None, BYTE_VOCAB):
                raise ValueError(f"the byte tokenizer has a fixed vocab_size of {BYTE_VOCAB}")
            self.vocab_size = BYTE_VOCAB
        elif self.vocab_size is None:
            self.vocab_size = 4096
        elif self.vocab_size < 300:
            raise ValueError("a BPE vocab_size must be at least 300")
        return self


class ModelSpec(Strict):
    """A preset, explicit architecture fields, or a preset with some fields overridden."""

    preset: str | None = Field(None, max_length=64)
    base_model_id: ObjectId | None = None
    arch: Literal["gpt2", "llama"] | None = None
    n_layer: int | None = Field(None, ge=1, le=256)
    n_head: int | None = Field(None, ge=1, le=256)
    d_model: int | None = Field(None, ge=8, le=65536)
    n_kv_head: int | None = Field(None, ge=1, le=256)
    d_ff: int | None = Field(None, ge=1, le=1_048_576)
    rope_theta: float | None = Field(None, gt=0, le=1e9, allow_inf_nan=False)
    # Mixture of experts (llama): {"num_experts": 8, "top_k": 2} and optionally
    # every_k_layers, aux_loss_coef and router_z_loss_coef.
    moe: MoEConfig | None = None
    # GPT-2's init (residual projections at 0.02/sqrt(2 n_layer)); false: 0.02 everywhere.
    scale_residual_init: bool = True

    @model_validator(mode="after")
    def _resolve(self) -> ModelSpec:
        if self.base_model_id is not None:
            if self.preset is not None:
                raise ValueError("give base_model_id or preset, not both")
            return self  # the architecture is the base model's, filled in on create
        if self.preset is not None:
            if self.preset not in PRESETS:
                known = ", ".join(sorted(PRESETS))
                raise ValueError(f"unknown preset {self.preset!r}; known presets: {known}")
            base: dict[str, Any] = PRESETS[self.preset]()
        else:
            base = {"arch": "gpt2"}
        if self.moe is None and "moe" in base:
            self.moe = MoEConfig(**base["moe"])
        for name in ("arch", "n_layer", "n_head", "d_model", "n_kv_head", "d_ff", "rope_theta"):
            value = getattr(self, name)
            if value is None and name in base:
                setattr(self, name, base[name])
        missing = [n for n in ("n_layer", "n_head", "d_model") if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"give a preset or all of n_layer, n_head, d_model (missing {missing})"
            )
        assert self.d_model is not None and self.n_head is not None
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if (self.d_model // self.n_head) % 2 and self.arch == "llama":
            raise ValueError("llama needs an even head size (d_model / n_head) for RoPE")
        if self.n_kv_head is not None:
            if self.arch != "llama":
                raise ValueError("n_kv_head applies to the llama architecture only")
            if self.n_head % self.n_kv_head:
                raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head")
        if self.rope_theta is not None and self.arch != "llama":
            raise ValueError("rope_theta applies to the llama architecture only")
        if self.moe is not None:
            if self.arch != "llama":
                raise ValueError("moe applies to the llama architecture only")
            assert self.n_layer is not None
            if self.moe.every_k_layers > self.n_layer:
                raise ValueError(
                    f"moe.every_k_layers ({self.moe.every_k_layers}) exceeds n_layer "
                    f"({self.n_layer}): no layer would have experts"
                )
        return self


BATCH_SIZE_MAX = 1_000_000
EVAL_BATCHES_DEFAULT = 20
# The most validation sequences one evaluation reads: the default eval_batches times the
# largest batch_size, so only an eval_batches the spec names can exceed it.
EVAL_SEQUENCES_MAX = EVAL_BATCHES_DEFAULT * BATCH_SIZE_MAX


class TrainingSpec(Strict):
    max_steps: int = Field(2000, ge=1, le=10_000_000)
    seq_len: int = Field(64, ge=8, le=131072)
    batch_size: int = Field(12, ge=1, le=BATCH_SIZE_MAX)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0, allow_inf_nan=False)
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr: float | None = Field(None, ge=0.0)
    weight_decay: float = Field(0.1, ge=0.0, le=10.0)
    # AdamW's decay rates of its gradient mean and of its squared-gradient mean.
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    eval_interval: int = Field(250, ge=1)
    # The validation set: eval_batches x batch_size sequences, whatever the ranks and micro-batches.
    eval_batches: int = Field(EVAL_BATCHES_DEFAULT, ge=1, le=10_000)
    checkpoint_interval: int = Field(500, ge=1)
    seed: int = Field(1337, ge=0, le=2**31 - 1)
    # auto: bf16 on GPUs that support it and CPUs with AVX512-BF16 or AMX-BF16, fp32 elsewhere.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # auto: on for GPU processes, off on CPU
    # Bit-for-bit reproducible runs (and resumes) at some cost in speed.
    deterministic: bool = False
    activation_checkpointing: bool = False

    @model_validator(mode="after")
    def _evaluation_is_bounded(self) -> TrainingSpec:
        if self.eval_batches * self.batch_size > EVAL_SEQUENCES_MAX:
            raise ValueError(
                f"training.eval_batches ({self.eval_batches}) x training.batch_size "
                f"({self.batch_size}) is more than {EVAL_SEQUENCES_MAX:,} validation "
                "sequences per evaluation; lower training.eval_batches"
            )
        return self


class ResourcesSpec(Strict):
    # Up to the number of nodes registered in the pool (checked when the job is created).
    nodes: int = Field(1, ge=1, le=256)
    processes_per_node: int = Field(1, ge=1, le=64)
    accelerator: Literal["auto", "gpu", "cpu"] = "auto"
    # ddp: replicas; fsdp: sharded parameters; tp: each llama block split over
    # tensor_parallel_size processes; fsdp+tp: tensor parallel within a node, FSDP across.
    strategy: Literal["ddp", "fsdp", "tp", "fsdp+tp"] = "ddp"
    # Processes that split each block (tp, fsdp+tp): processes_per_node when left out.
    tensor_parallel_size: int | None = Field(None, ge=1, le=64)
    pool: str = Field("default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    # Lower runs first; within one priority, the project using the fewest slots goes next.
    # Left out: DEFAULT_PRIORITY, or the project's quota cap if that is worse.
    priority: int = Field(DEFAULT_PRIORITY, ge=1, le=99)
    # New attempts after a trainer failure; a lost node or a preemption costs none.
    max_restarts: int = Field(3, ge=0, le=100)

    @model_validator(mode="after")
    def _layout(self) -> ResourcesSpec:
        problem = layout_problem(
            self.strategy, self.tensor_parallel_size, self.nodes * self.processes_per_node
        )
        if problem is not None:
            raise ValueError(problem[1])
        if self.strategy in TENSOR_PARALLEL:
            if self.tensor_parallel_size is None:
                self.tensor_parallel_size = self.processes_per_node
        else:
            self.tensor_parallel_size = 1
        return self

    @property
    def data_parallel_size(self) -> int:
        """Processes that read different batches: groups of tensor_parallel_size share one."""
        return self.nodes * self.processes_per_node // (self.tensor_parallel_size or 1)


class LoraSpec(Strict):
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, min_length=1, max_length=64
    )


class SftSpec(Strict):
    """How to fine-tune: the method, packing, overlong examples, epochs, samples at the end."""

    method: Literal["full", "lora"] = "full"
    lora: LoraSpec | None = None
    packing: bool = True
    overlong: Literal["truncate", "drop"] = "truncate"
    epochs: int | None = Field(None, ge=1, le=1000)
    eval_prompts: int = Field(4, ge=0, le=32)

    @model_validator(mode="after")
    def _lora(self) -> SftSpec:
        if self.method == "lora" and self.lora is None:
            self.lora = LoraSpec()
        if self.method == "full" and self.lora is not None:
            raise ValueError("lora settings need method 'lora'")
        return self


class DpoSpec(SftSpec):
    """Preference tuning (DPO): the fine-tuning settings of `sft`, and beta, the strength of
    the pull back towards the base model (the frozen reference)."""

    beta: float = Field(0.1, gt=0.0, le=100.0)


FINE_TUNING = ("sft", "dpo")  # job types that tune a base model, with a section of that name


def tuning(spec: dict[str, Any]) -> dict[str, Any]:
    """A resolved fine-tuning spec's settings: its `sft` or `dpo` section."""
    return dict(spec[spec["type"]])


SFT_TRAINING_DEFAULTS = {"lr": 1e-4, "warmup_steps": 10, "eval_interval": 50, "max_steps": 200}
LORA_LR = 1e-3


class JobSpec(Strict):
    """A job as submitted to `POST /v1/jobs`: pretraining, or fine-tuning a base model on
    chat examples (sft) or preference pairs (dpo)."""

    name: Name | None = None
    type: Literal["pretrain", "sft", "dpo"] = "pretrain"
    dataset_id: ObjectId
    validation: ValidationSpec = Field(default_factory=ValidationSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(preset="tiny"))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    sft: SftSpec | None = None
    dpo: DpoSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.sft is not None and self.type != "sft":
            raise ValueError("sft settings need type 'sft' (a dpo job has them in 'dpo')")
        if self.dpo is not None and self.type != "dpo":
            raise ValueError("dpo settings need type 'dpo'")
        if self.type in FINE_TUNING:
            self._sft_defaults()
        elif self.model.base_model_id is not None:
            raise ValueError("model.base_model_id needs type 'sft' or 'dpo'")
        t = self.training
        if "warmup_steps" not in t.model_fields_set:
            t.warmup_steps = min(t.warmup_steps, t.max_steps)  # a default follows the others
        if t.min_lr is None:
            t.min_lr = t.lr / 10
        if t.min_lr > t.lr:
            raise ValueError(f"training.min_lr ({t.min_lr}) must not exceed training.lr ({t.lr})")
        if t.warmup_steps > t.max_steps:
            raise ValueError(
                f"training.warmup_steps ({t.warmup_steps}) must not exceed "
                f"training.max_steps ({t.max_steps})"
            )
        self._tensor_parallel_fits()
        res = self.resources
        world = res.data_parallel_size
        # Under tensor parallelism a group of processes reads one micro-batch.
        readers = "processes" if res.strategy not in TENSOR_PARALLEL else "data-parallel groups"
        if t.micro_batch_size is None:
            if t.batch_size % world:
                raise ValueError(
                    f"training.batch_size ({t.batch_size}) must be divisible by the number of "
                    f"{readers} ({world})"
                )
            t.micro_batch_size = t.batch_size // world
        if t.batch_size % (t.micro_batch_size * world):
            raise ValueError(
                f"training.batch_size ({t.batch_size}) must be a multiple of "
                f"training.micro_batch_size ({t.micro_batch_size}) x {readers} ({world})"
            )
        return self

    def _tensor_parallel_fits(self) -> None:
        """A pretraining model must split evenly over the tensor-parallel size (a base
        model's architecture is checked when the job is created)."""
        res, m = self.resources, self.model
        if res.strategy not in TENSOR_PARALLEL or self.type in FINE_TUNING:
            return
        assert m.arch is not None and m.n_layer and m.n_head and m.d_model
        cfg = ModelConfig(
            arch=m.arch,
            n_layer=m.n_layer,
            n_head=m.n_head,
            d_model=m.d_model,
            n_kv_head=m.n_kv_head,
            d_ff=m.d_ff,
            moe=m.moe,
            vocab_size=self.tokenizer.vocab_size or BYTE_VOCAB,
            seq_len=self.training.seq_len,
        )
        problem = tensor_parallel_problem(cfg, res.tensor_parallel_size or 1)
        if problem is not None:
            raise ValueError(problem[1])

    def _sft_defaults(self) -> None:
        if self.model.base_model_id is None:
            raise ValueError("a fine-tuning job needs model.base_model_id")
        if "tokenizer" in self.model_fields_set and self.tokenizer.type != "model":
            raise ValueError("a fine-tuning job uses its base model's tokenizer")
        self.tokenizer = TokenizerSpec(type="model")
        if self.type == "dpo":
            self.dpo = self.dpo or DpoSpec()
            settings: SftSpec = self.dpo
        else:
            self.sft = settings = self.sft or SftSpec()
        t = self.training
        given = set(t.model_fields_set)
        for name, value in SFT_TRAINING_DEFAULTS.items():
            if name not in given:
                setattr(t, name, value)
        if "lr" not in given and settings.method == "lora":
            t.lr = LORA_LR
        if "warmup_steps" not in given:
            t.warmup_steps = min(t.warmup_steps, t.max_steps)

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as stored and returned."""
        return self.model_dump(mode="json")
