"""`/v1/jobs`: create, list, show, cancel, pause, resume, events, metrics, checkpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import ProjectDep, SessionDep, SettingsDep
from api.schemas import CheckpointOut, EventOut, JobOut, MetricPoint, MetricsOut, Page
from api.views import job_out
from domain import jobs
from domain.db import get_sessionmaker
from domain.lifecycle import TERMINAL, JobStatus
from domain.orm import Checkpoint, Event, Job, Metric
from domain.paging import page
from trainyard.specs import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobOut)
def create_job(
    spec: JobSpec,
    response: Response,
    project_id: ProjectDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobOut:
    """Create a job from a JobSpec; a retried request with the same Idempotency-Key
    returns the first job."""
    job, created = jobs.create(
        session=session,
        project_id=project_id,
        spec=spec,
        idempotency_key=idempotency_key,
        default_gpu_bytes=settings.default_gpu_memory_bytes,
    )
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return job_out(job)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    project_id: ProjectDep,
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, object]:
    """List the project's jobs, newest first, optionally by status."""
    query = select(Job).where(Job.project_id == project_id)
    if status:
        query = query.where(Job.status == status)
    rows, more = page(session, query, Job.id, limit=limit, after=after)
    return {"data": [job_out(j) for j in rows], "has_more": more}


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Show a job with its status, progress, attempt, error and model."""
    return job_out(jobs.get(session=session, project_id=project_id, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Cancel a job; cancelling a finished job changes nothing."""
    return job_out(jobs.cancel(session=session, project_id=project_id, job_id=job_id))


@router.post("/{job_id}/pause", response_model=JobOut)
def pause_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Pause a job: it checkpoints, frees its nodes and waits as `paused`."""
    return job_out(jobs.pause(session=session, project_id=project_id, job_id=job_id))


@router.post("/{job_id}/resume", response_model=JobOut)
def resume_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Queue a paused job again; it resumes from its latest checkpoint."""
    return job_out(jobs.resume(session=session, project_id=project_id, job_id=job_id))


def _events_after(job_id: str, after: int, limit: int) -> list[Event]:
    with get_sessionmaker()() as session:
        query = select(Event).where(Event.job_id == job_id)
        rows, _ = page(session, query, Event.id, limit=limit, after=after, newest_first=False)
        return rows


async def _follow(request: Request, job_id: str, after: int) -> AsyncIterator[str]:
    while True:
        rows = await asyncio.to_thread(_events_after, job_id, after, 500)
        for ev in rows:
            after = ev.id
            body = EventOut.model_validate(ev).model_dump_json()
            yield f"id: {ev.id}\nevent: {ev.type}\ndata: {body}\n\n"
        if not rows:
            with get_sessionmaker()() as session:
                status = session.execute(select(Job.status).where(Job.id == job_id)).scalar()
            if status in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)


@router.get("/{job_id}/events", response_model=Page[EventOut])
def job_events(
    job_id: str,
    request: Request,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: int | None = None,
    last_event_id: Annotated[int | None, Header()] = None,
) -> object:
    """The job's event log, oldest first; `Accept: text/event-stream` follows it live."""
    job = jobs.get(session=session, project_id=project_id, job_id=job_id)
    if "text/event-stream" in request.headers.get("accept", ""):
        start = after if after is not None else (last_event_id or 0)
        return StreamingResponse(
            _follow(request, job.id, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    query = select(Event).where(Event.job_id == job.id)
    rows, more = page(session, query, Event.id, limit=limit, after=after, newest_first=False)
    return {"data": rows, "has_more": more}


@router.get("/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(
    job_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    names: Annotated[list[str] | None, Query(alias="name")] = None,
    after_step: int = 0,
) -> MetricsOut:
    """Time series per metric (loss, val_loss, lr, grad_norm, tokens_per_s, mfu)."""
    job = jobs.get(session=session, project_id=project_id, job_id=job_id)
    query = select(Metric.name, Metric.step, Metric.value).where(
        Metric.job_id == job.id, Metric.step > after_step
    )
    if names:
        query = query.where(Metric.name.in_(names))
    series: dict[str, list[MetricPoint]] = {}
    for name, step, value in session.execute(query.order_by(Metric.name, Metric.step, Metric.id)):
        series.setdefault(name, []).append(MetricPoint(step=step, value=value))
    return MetricsOut(job_id=job.id, series=series)


@router.get("/{job_id}/checkpoints", response_model=Page[CheckpointOut])
def job_checkpoints(job_id: str, project_id: ProjectDep, session: SessionDep) -> dict[str, object]:
    """The job's checkpoints with their step and metrics."""
    job = jobs.get(session=session, project_id=project_id, job_id=job_id)
    rows = (
        session.execute(
            select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)
        )
        .scalars()
        .all()
    )
    return {"data": rows, "has_more": False}
