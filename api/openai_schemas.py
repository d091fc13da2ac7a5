"""Request and response schemas of the OpenAI-compatible routes, as OpenAI's SDKs type them.

Every field the SDK marks as required is always present; nullable ones are sent as null.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")
Auto = Literal["auto"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListOut(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# Files


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# Fine-tuning jobs


class Hyperparameters(Strict):
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | None = None

    @field_validator("batch_size", "n_epochs")
    @classmethod
    def _count(cls, value: Any) -> Any:
        if isinstance(value, int) and not 1 <= value <= 100_000:
            raise ValueError("must be 'auto' or a whole number from 1 to 100000")
        return value

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 < value <= 1000.0:
            raise ValueError("must be 'auto' or a number above 0 and at most 1000")
        return value


class DpoHyperparameters(Hyperparameters):
    beta: Auto | float | None = None


class Supervised(Strict):
    hyperparameters: Hyperparameters | None = None


class Dpo(Strict):
    hyperparameters: DpoHyperparameters | None = None


class MethodIn(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class FineTuningJobIn(Strict):
    """`POST /v1/fine_tuning/jobs`. Options OpenAI lacks arrive as the native spec's
    sections at the top level (the SDK's `extra_body`): `sft` for supervised jobs or `dpo`
    for DPO jobs (method full or lora, lora, packing, overlong), `training` and
    `resources`."""

    model: str = Field(min_length=1, max_length=255)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodIn | None = None
    integrations: list[dict[str, Any]] | None = None
    sft: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("at most 16 keys")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"the value of {key!r} is longer than 512 characters")
        return value

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("this server sends to no integrations; use webhooks instead")
        return value


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None


class FineTuningJobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    suffix: str | None = None


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class JobCheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float]


# Chat completions


class TextPart(Strict):
    type: Literal["text"]
    text: str = Field(max_length=100_000)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, refusal and the like are not used
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(max_length=100_000)

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionIn(Strict):
    """`POST /v1/chat/completions` for a chat model of the project."""

    model: str = Field(min_length=1, max_length=255)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(None, ge=1, le=8)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    logprobs: Literal[False] | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(None, ge=0.0, le=0.0)
    presence_penalty: float | None = Field(None, ge=0.0, le=0.0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty stop strings")
        return value

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise ValueError("only {'type': 'text'} is supported")
        return value


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceOut(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionOut(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: Usage
    system_fingerprint: str | None = None
