"""`/v1/fine_tuning/jobs`, OpenAI-compatible: a fine-tuning job is a trainyard SFT job (the
same row and id), visible in both APIs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CursorQuery, ProjectDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.openai_schemas import (
    Dpo,
    FineTuningJobIn,
    FineTuningJobOut,
    JobCheckpointOut,
    JobEventOut,
    ListOut,
    Supervised,
)
from api.openai_views import checkpoint_out, event_out, job_out
from domain import jobs, openai_jobs
from domain.errors import Conflict, NotFound
from domain.lifecycle import JobStatus
from domain.orm import Checkpoint, Dataset, Event, Job
from domain.paging import page
from trainyard.specs import FINE_TUNING

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai"])
METADATA_KEY = re.compile(r"^metadata\[(.+)\]$")


def _job(session: Session, project_id: str, job_id: str) -> Job:
    job = jobs.get(session=session, project_id=project_id, job_id=job_id)
    if job.type not in FINE_TUNING:
        raise NotFound("fine-tuning job", job_id)
    return job


def _out(session: Session, job: Job) -> FineTuningJobOut:
    dataset = session.get(Dataset, job.dataset_id)
    return job_out(job, dataset.records if dataset else None)


def _list(data: list[Any], more: bool) -> dict[str, Any]:
    return {
        "data": data,
        "has_more": more,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
    }


@router.post("", response_model=FineTuningJobOut)
def create_job(
    body: FineTuningJobIn,
    project_id: ProjectDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> FineTuningJobOut:
    """Create a fine-tuning job; a retry with the same Idempotency-Key returns the first."""
    method = body.method.type if body.method else "supervised"
    hyper = body.hyperparameters.model_dump() if body.hyperparameters else {}
    if body.method is not None:
        section = getattr(body.method, method, None)
        # Reinforcement's section is free-form (the method is refused by name below).
        if isinstance(section, Supervised | Dpo) and section.hyperparameters is not None:
            hyper |= section.hyperparameters.model_dump(exclude_none=True)
    job, _ = openai_jobs.create(
        session=session,
        project_id=project_id,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed,
        metadata=body.metadata,
        method=method,
        hyperparameters=hyper,
        native={
            "sft": body.sft,
            "dpo": body.dpo,
            "training": body.training,
            "resources": body.resources,
        },
        idempotency_key=idempotency_key,
        default_gpu_bytes=settings.default_gpu_memory_bytes,
    )
    return _out(session, job)


@router.get("", response_model=ListOut[FineTuningJobOut])
def list_jobs(
    request: Request,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> dict[str, Any]:
    """List fine-tuning jobs, newest first; `metadata[k]=v` keeps jobs whose metadata has
    that pair, and `metadata=null` keeps jobs without metadata."""
    query = select(Job).where(Job.project_id == project_id, Job.type.in_(FINE_TUNING))
    for name, value in request.query_params.multi_items():
        match = METADATA_KEY.match(name)
        if match:
            query = query.where(Job.meta[match.group(1)].as_string() == value)
        elif name == "metadata":
            if value != "null":
                raise ApiError(400, "invalid_request", "metadata must be null or metadata[k]=v")
            query = query.where(Job.meta.is_(None))
    rows, more = page(session, query, Job.id, limit=limit, after=after)
    return _list([_out(session, j) for j in rows], more)


@router.get("/{job_id}", response_model=FineTuningJobOut)
def get_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> FineTuningJobOut:
    """Show a fine-tuning job."""
    return _out(session, _job(session, project_id, job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJobOut)
def cancel_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> FineTuningJobOut:
    """Cancel a job; a job that already succeeded or failed cannot be cancelled (400)."""
    job = _job(session, project_id, job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise Conflict("job_not_cancellable", f"job {job.id} has already {job.status}")
    return _out(session, jobs.cancel(session=session, project_id=project_id, job_id=job.id))


@router.post("/{job_id}/pause", response_model=FineTuningJobOut)
def pause_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> FineTuningJobOut:
    """Pause a job at its next checkpoint and free its nodes."""
    job = _job(session, project_id, job_id)
    return _out(session, jobs.pause(session=session, project_id=project_id, job_id=job.id))


@router.post("/{job_id}/resume", response_model=FineTuningJobOut)
def resume_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> FineTuningJobOut:
    """Resume a paused job from its latest checkpoint; a job that is not paused is a 400
    here, as OpenAI answers (the native route takes a queued one as already resumed)."""
    job = _job(session, project_id, job_id)
    if job.status != JobStatus.PAUSED:
        raise Conflict("job_not_paused", f"job {job.id} is {job.status}, not paused")
    return _out(session, jobs.resume(session=session, project_id=project_id, job_id=job.id))


def _event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit():
        raise ApiError(
            400, "invalid_request", f"after: not an event id: {after!r}", {"field": "after"}
        )
    return int(after)


@router.get("/{job_id}/events", response_model=ListOut[JobEventOut])
def job_events(
    job_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    """The job's events, newest first; evaluations are `metrics` events."""
    job = _job(session, project_id, job_id)
    query = select(Event).where(Event.job_id == job.id)
    rows, more = page(session, query, Event.id, limit=limit, after=_event_cursor(after))
    return _list([event_out(e) for e in rows], more)


@router.get("/{job_id}/checkpoints", response_model=ListOut[JobCheckpointOut])
def job_checkpoints(
    job_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    after: CursorQuery = None,
) -> dict[str, Any]:
    """The job's checkpoints, newest first, with their metrics."""
    job = _job(session, project_id, job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    rows, more = page(session, query, Checkpoint.id, limit=limit, after=after)
    return _list([checkpoint_out(job, c) for c in rows], more)
