"""Trainyard objects in OpenAI's shapes: datasets as files, jobs as fine-tuning jobs, their
events and checkpoints.

Ids are trainyard's own (`ds_...`, `job_...`), so one object has one id in both APIs.
Statuses map as: queued and preparing -> `queued` (files are validated at upload, so
there is no `validating_files`), running -> `running`, paused -> `paused`, cancelling and
cancelled -> `cancelled`, succeeded and failed as they are.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from api.openai_schemas import (
    FileOut,
    FineTuningJobOut,
    JobCheckpointOut,
    JobErrorOut,
    JobEventOut,
)
from domain import openai_jobs, result_files
from domain.lifecycle import JobStatus
from domain.orm import Checkpoint, Dataset, Event, Job

FILE_STATUS = {"validating": "uploaded", "ready": "processed", "invalid": "error"}
JOB_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.PREPARING: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.PAUSED: "paused",
    JobStatus.CANCELLING: "cancelled",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
}
# The request field a job's failure is about, where one is.
ERROR_PARAM = {"invalid_dataset": "training_file"}


def unix(moment: datetime | None) -> int | None:
    """Seconds since the epoch, as OpenAI's objects count time."""
    return None if moment is None else int(moment.timestamp())


def file_out(dataset: Dataset) -> FileOut:
    """A dataset as an OpenAI file (a job's result file has purpose `fine-tune-results`);
    a bad line's number and reason go in status_details."""
    details = None
    if dataset.errors:
        details = "; ".join(
            (f"line {e['line']}: " if e.get("line") else "") + str(e.get("message"))
            for e in dataset.errors
        )
    return FileOut(
        id=dataset.id,
        bytes=dataset.bytes,
        created_at=int(dataset.created_at.timestamp()),
        filename=dataset.filename or dataset.name,
        purpose="fine-tune-results" if dataset.kind == result_files.KIND else "fine-tune",
        status=FILE_STATUS.get(dataset.status, "error"),
        status_details=details,
    )


def fine_tuned_model(job: Job) -> str | None:
    """The trained model's name where the OpenAI route named it, else its id."""
    if job.model_id is None:
        return None
    return job.name if job.name and job.name.startswith("ft:") else job.model_id


def job_out(job: Job, records: int | None = None) -> FineTuningJobOut:
    """A job as an OpenAI fine-tuning job: every required field, `error` null unless failed."""
    spec = job.spec
    training = spec["training"]
    error = None
    if job.status == JobStatus.FAILED:
        code = job.error_code or "failed"
        error = JobErrorOut(
            code=code, message=job.error_message or code, param=ERROR_PARAM.get(code)
        )
    estimated = None
    if job.status == JobStatus.RUNNING and job.tokens_per_s:
        left = max(0, training["max_steps"] - job.step) * training["batch_size"]
        estimated = int(time.time() + left * training["seq_len"] / job.tokens_per_s)
    hyper = openai_jobs.hyperparameters(job, records)
    return FineTuningJobOut(
        id=job.id,
        created_at=int(job.created_at.timestamp()),
        error=error,
        fine_tuned_model=fine_tuned_model(job),
        finished_at=unix(job.finished_at),
        # The top-level (deprecated) field keeps OpenAI's three; beta is in `method`.
        hyperparameters={k: v for k, v in hyper.items() if k != "beta"},
        model=job.base_model or str(spec["model"].get("base_model_id")),
        organization_id=job.project_id,
        result_files=[job.result_file_id] if job.result_file_id else [],
        seed=training["seed"],
        status=JOB_STATUS[JobStatus(job.status)],
        trained_tokens=job.tokens,
        training_file=job.dataset_id,
        validation_file=spec["validation"].get("dataset_id"),
        estimated_finish=estimated,
        metadata=job.meta,
        method=(
            {"type": "dpo", "dpo": {"hyperparameters": hyper}}
            if spec["type"] == "dpo"
            else {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        ),
        suffix=job.suffix,
    )


def _level(event: Event) -> str:
    if event.type == "error" or event.data.get("status") == JobStatus.FAILED:
        return "error"
    return "warn" if event.type in ("preempted",) else "info"


def event_out(event: Event) -> JobEventOut:
    """A job event; an evaluation is a `metrics` event with OpenAI's metric names."""
    created = int(event.created_at.timestamp())
    if event.type == "eval":
        d = event.data
        data: dict[str, Any] = {
            "step": d.get("step"),
            "total_steps": d.get("total_steps"),
            "train_loss": d.get("train_loss"),
            "valid_loss": d.get("val_loss"),
            "train_mean_token_accuracy": d.get("train_token_accuracy"),
            "valid_mean_token_accuracy": d.get("val_token_accuracy"),
            # DPO jobs: the validation pairs' rewards (see trainer.dpo)
            **{k: v for k, v in d.items() if k.startswith("val_reward_")},
        }
        message = f"Step {d.get('step')}/{d.get('total_steps')}: " + ", ".join(
            f"{k.replace('_', ' ')}={v:.4f}"
            for k, v in data.items()
            if k.endswith("loss") and isinstance(v, float)
        )
        return JobEventOut(
            id=str(event.id),
            created_at=created,
            level="info",
            message=message,
            type="metrics",
            data=data,
        )
    return JobEventOut(
        id=str(event.id),
        created_at=created,
        level=_level(event),
        message=event.message or event.type,
        type="message",
        data={"kind": event.type, **event.data},
    )


def checkpoint_out(job: Job, checkpoint: Checkpoint) -> JobCheckpointOut:
    """A checkpoint with its metrics under OpenAI's names, and the model id that serves it
    (`{fine-tuned model}:ckpt-step-{step}`)."""
    names = {
        "loss": "train_loss",
        "val_loss": "valid_loss",
        "token_accuracy": "train_mean_token_accuracy",
        "val_token_accuracy": "valid_mean_token_accuracy",
    }
    metrics = {
        names[k]: float(v) for k, v in checkpoint.metrics.items() if k in names and v is not None
    }
    metrics["step"] = float(checkpoint.step)
    return JobCheckpointOut(
        id=checkpoint.id,
        created_at=int(checkpoint.created_at.timestamp()),
        fine_tuned_model_checkpoint=openai_jobs.checkpoint_name(job, checkpoint.step),
        fine_tuning_job_id=job.id,
        step_number=checkpoint.step,
        metrics=metrics,
    )
