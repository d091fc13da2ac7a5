"""Public response schemas and the internal (node worker) request schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainyard.specs import Name

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class ValidationIssue(BaseModel):
    line: int | None
    message: str


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    filename: str | None
    format: str
    kind: str
    status: str
    bytes: int
    sha256: str
    records: int | None
    errors: list[ValidationIssue]
    source_dataset_id: str | None = None
    cleaning: dict[str, Any] | None = None
    cleaning_report: dict[str, Any] | None = None
    created_at: datetime


class TokenizerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    object: Literal["tokenizer"] = "tokenizer"
    kind: str
    vocab_size: int
    source_dataset_id: str | None
    status: str
    created_at: datetime


class Progress(BaseModel):
    step: int
    max_steps: int
    tokens: int
    tokens_per_s: float | None
    eta_seconds: float | None
    loss: float | None
    val_loss: float | None


class JobError(BaseModel):
    code: str
    message: str | None


class JobOut(BaseModel):
    id: str
    object: Literal["job"] = "job"
    name: str | None
    type: str
    status: str
    # Why a queued job is not running yet: "waiting for 2 nodes with 1 free slot".
    status_reason: str | None = None
    dataset_id: str
    spec: dict[str, Any]
    progress: Progress
    attempt: int
    restarts: int = 0
    error: JobError | None
    model_id: str | None
    params: int | None
    flops_per_token: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    type: str
    attempt: int | None
    message: str | None
    data: dict[str, Any]
    created_at: datetime


class MetricPoint(BaseModel):
    step: int
    value: float


class MetricsOut(BaseModel):
    job_id: str
    series: dict[str, list[MetricPoint]]
    has_more: bool = False
    last_step: int | None = None  # pass as after_step for the next page


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    step: int
    attempt: int
    metrics: dict[str, Any]
    created_at: datetime


class ModelFile(BaseModel):
    name: str
    bytes: int
    url: str


class ModelOut(BaseModel):
    """A model; `created` and `owned_by` make it OpenAI's Model as well."""

    id: str
    object: Literal["model"] = "model"
    name: str | None
    job_id: str | None
    arch: str
    config: dict[str, Any]
    files: list[ModelFile]
    created_at: datetime
    created: int
    owned_by: str


class ModelList(Page[ModelOut]):
    """A page of models that is also OpenAI's model list."""

    object: Literal["list"] = "list"


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class GenerateIn(BaseModel):
    """A plain `prompt`, or chat `messages` for a fine-tuned chat model (exactly one)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    prompt: str | None = Field(None, min_length=1, max_length=100_000)
    messages: list[ChatMessageIn] | None = Field(None, min_length=1, max_length=256)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_k: int | None = Field(None, ge=1, le=1_048_576)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _one(self) -> GenerateIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateOut(BaseModel):
    model_id: str
    prompt: str | None
    messages: list[ChatMessageIn] | None = None
    text: str
    finish_reason: Literal["stop", "length"]
    usage: Usage


# Internal endpoints, spoken by node workers only.


class NodeRegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=200)
    host: str = Field(max_length=255)
    queue: str = Field(max_length=255)
    pool: str = "default"
    accelerator: Literal["cpu", "gpu"]
    slots: int = Field(ge=1, le=1024)
    devices: list[str] = []
    memory_bytes: int | None = Field(
        None, ge=0, description="memory of one GPU, or a CPU node's RAM"
    )
    address: str | None = Field(None, max_length=255, description="where peers reach it")


class NodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: str


class TrainerEvent(BaseModel):
    seq: int = Field(ge=1)
    event: dict[str, Any]


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[TrainerEvent] = Field(default=[], max_length=10_000)


class StartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    master_port: int | None = Field(None, ge=1, le=65535, description="rank 0 of a gang")


class AttemptState(BaseModel):
    status: str
    cancel: bool
    last_seq: int
    master_addr: str | None = None
    master_port: int | None = None


class FinishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exit_code: int | None
    log_tail: str | None = Field(None, max_length=100_000)
    reason: str | None = Field(None, max_length=1000)
    preempted: bool = False


class NodeAttemptOut(BaseModel):
    job_id: str
    project_id: str
    attempt: int
    rank: int
    nodes: int
    slots: int
    status: str


class NodeInfo(BaseModel):
    id: str
    object: Literal["node"] = "node"
    name: str
    status: str
    host: str
    address: str | None
    pool: str
    accelerator: str
    slots: int
    free_slots: int
    devices: list[str]
    memory_bytes: int | None
    last_heartbeat_at: datetime
    attempts: list[NodeAttemptOut]


class QuotaIn(BaseModel):
    """A project's limits; a field left out or null means no limit."""

    model_config = ConfigDict(extra="forbid")
    max_running_slots: int | None = Field(None, ge=0)
    max_queued_jobs: int | None = Field(None, ge=0)
    max_storage_bytes: int | None = Field(None, ge=0)
    # The best (lowest) resources.priority the project's jobs may ask for, 1 to 99.
    best_priority: int | None = Field(None, ge=1, le=99)


class QuotaOut(QuotaIn):
    model_config = ConfigDict(extra="ignore")
    project: str
    running_slots: int
    queued_jobs: int
    storage_bytes: int


class KeyIn(BaseModel):
    """A new API key (admin keys only): its project (created if new), role and lifetime."""

    model_config = ConfigDict(extra="forbid")
    project: Name = Field(min_length=1)
    role: Literal["member", "admin"] = "member"
    # At most ten years; none: the key works until it is revoked.
    expires_in_seconds: int | None = Field(None, ge=1, le=10 * 365 * 86400)


class KeyOut(BaseModel):
    """An API key as listed: never the secret, only its first characters."""

    id: str
    object: Literal["api_key"] = "api_key"
    prefix: str
    project_id: str
    project: str
    role: Literal["member", "admin"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """A key just created, with its secret: shown this once."""

    key: str
