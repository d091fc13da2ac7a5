"""Typed results of the SDK: what the API answers, as pydantic models.

Fields the API adds later are kept (extra="allow"), so an older SDK keeps working.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

TERMINAL = ("succeeded", "failed", "cancelled")


class Result(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(Result, Generic[T]):
    data: list[T]
    has_more: bool


class ValidationIssue(Result):
    line: int | None = None
    message: str


class Dataset(Result):
    id: str
    name: str
    filename: str | None = None
    format: str
    kind: str
    status: str
    bytes: int
    sha256: str
    records: int | None = None
    errors: list[ValidationIssue] = []
    created_at: datetime


class Progress(Result):
    step: int = 0
    max_steps: int = 0
    tokens: int = 0
    tokens_per_s: float | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    val_loss: float | None = None


class JobError(Result):
    code: str
    message: str | None = None


class Job(Result):
    id: str
    name: str | None = None
    type: str
    status: str
    dataset_id: str
    spec: dict[str, Any]
    progress: Progress
    attempt: int = 0
    error: JobError | None = None
    model_id: str | None = None
    params: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self.status in TERMINAL


class Event(Result):
    id: int
    type: str
    attempt: int | None = None
    message: str | None = None
    data: dict[str, Any] = {}
    created_at: datetime


class MetricPoint(Result):
    step: int
    value: float


class Checkpoint(Result):
    id: str
    step: int
    attempt: int
    metrics: dict[str, Any] = {}
    created_at: datetime


class ModelFile(Result):
    name: str
    bytes: int
    url: str


class Model(Result):
    id: str
    name: str | None = None
    job_id: str | None = None
    arch: str
    config: dict[str, Any] = {}
    files: list[ModelFile] = []
    created_at: datetime


class Generation(Result):
    model_id: str
    text: str
    finish_reason: str
