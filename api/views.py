"""Domain objects as the API shows them: the response schemas of jobs and models."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy import Row

from api.schemas import JobError, JobOut, ModelFile, ModelOut, Progress
from domain.lifecycle import WAITING, JobStatus
from domain.models import DOWNLOADABLE
from domain.orm import Checkpoint, Job, Model


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """A response model already built, serialized once: FastAPI would dump it to a dict,
    validate that again against the route's response model, then serialize it."""
    return Response(body.model_dump_json(), status_code, media_type="application/json")


def job_out(job: Job | Row[Any]) -> JobOut:
    """The public view of a job (an ORM object or a row of its columns), with its progress."""
    training = job.spec["training"]
    tokens_per_step = training["batch_size"] * training["seq_len"]
    remaining = max(0, training["max_steps"] - job.step)
    eta = None
    if job.tokens_per_s and job.status == JobStatus.RUNNING:
        eta = round(remaining * tokens_per_step / job.tokens_per_s, 1)
    error = JobError(code=job.error_code, message=job.error_message) if job.error_code else None
    return JobOut(
        id=job.id,
        name=job.name,
        type=job.type,
        status=job.status,
        status_reason=job.waiting_reason if job.status in WAITING else None,
        dataset_id=job.dataset_id,
        spec=job.spec,
        progress=Progress(
            step=job.step,
            max_steps=training["max_steps"],
            tokens=job.tokens,
            tokens_per_s=job.tokens_per_s,
            eta_seconds=eta,
            loss=job.loss,
            val_loss=job.val_loss,
        ),
        attempt=job.attempt,
        restarts=job.restarts,
        error=error,
        model_id=job.model_id,
        params=job.params,
        flops_per_token=job.flops_per_token,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def checkpoint_model_out(
    ref: str, job: Job, checkpoint: Checkpoint, base: Model | None
) -> ModelOut:
    """A fine-tuning checkpoint as the model its id serves: the base's architecture, no
    files to download (it is exported when first sampled)."""
    return ModelOut(
        id=ref,
        name=ref,
        job_id=job.id,
        arch=base.arch if base else job.spec["model"].get("arch", ""),
        config=base.config if base else {},
        files=[],
        created_at=checkpoint.created_at,
        created=int(checkpoint.created_at.timestamp()),
        owned_by=job.project_id,
    )


def model_out(model: Model) -> ModelOut:
    """The public view of a model, with download links."""
    files = [
        ModelFile(name=f["name"], bytes=f["bytes"], url=f"/v1/models/{model.id}/files/{f['name']}")
        for f in model.files
        if f["name"] in DOWNLOADABLE
    ]
    return ModelOut(
        id=model.id,
        name=model.name,
        job_id=model.job_id,
        arch=model.arch,
        config=model.config,
        files=files,
        created_at=model.created_at,
        created=int(model.created_at.timestamp()),
        owned_by=model.project_id,
    )
