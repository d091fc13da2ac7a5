"""`/v1/jobs`: create, list, show, cancel, pause, resume, events, metrics, checkpoints."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import (
    AsyncSessionDep,
    CursorQuery,
    ProjectDep,
    SessionDep,
    SettingsDep,
)
from api.errors import ApiError
from api.limits import StreamSlot, streams
from api.schemas import CheckpointOut, EventOut, JobOut, MetricPoint, MetricsOut, Page
from api.views import job_out, json_response
from api.wakeups import job_wakeups
from domain import jobs
from domain.db import get_sessionmaker
from domain.lifecycle import TERMINAL, JobStatus
from domain.orm import Checkpoint, Event, Job, Metric
from domain.paging import page, page_async
from trainyard.specs import JobSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_BIGINT = 2**63 - 1
MAX_STEP = 2**31 - 1  # steps are 32-bit integer columns
POLL_S = 0.5  # how often a stream looks for news where nothing wakes it
STREAM_EVENTS, STREAM_METRICS = 500, 5000  # the most a stream sends in one look


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
async def list_jobs(
    project_id: ProjectDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> Response:
    """List the project's jobs, newest first, optionally by status."""
    rows, more = await jobs.list_rows(
        project_id=project_id, status=status, limit=limit, after=after
    )
    return json_response(Page[JobOut](data=[job_out(j) for j in rows], has_more=more))


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, project_id: ProjectDep) -> Response:
    """Show a job with its status, progress, attempt, error and model."""
    return json_response(job_out(await jobs.read(project_id=project_id, job_id=job_id)))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Cancel a job; cancelling a finished job changes nothing."""
    return job_out(jobs.cancel(session=session, project_id=project_id, job_id=job_id))


@router.post("/{job_id}/pause", response_model=JobOut)
def pause_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Checkpoint a job and free its nodes (status `paused`); idempotent."""
    return job_out(jobs.pause(session=session, project_id=project_id, job_id=job_id))


@router.post("/{job_id}/resume", response_model=JobOut)
def resume_job(job_id: str, project_id: ProjectDep, session: SessionDep) -> JobOut:
    """Put a paused job back in the queue, to resume from its latest checkpoint; idempotent."""
    return job_out(jobs.resume(session=session, project_id=project_id, job_id=job_id))


def _events_after(job_id: str, after: int, limit: int) -> list[Event]:
    with get_sessionmaker()() as session:
        query = select(Event).where(Event.job_id == job_id)
        rows, _ = page(session, query, Event.id, limit=limit, after=after, newest_first=False)
        return rows


def _metrics_after(job_id: str, after: int, after_step: int) -> list[tuple[int, str, int, float]]:
    with get_sessionmaker()() as session:
        query = (
            select(Metric.id, Metric.name, Metric.step, Metric.value)
            .where(Metric.job_id == job_id, Metric.id > after, Metric.step > after_step)
            .order_by(Metric.id)
            .limit(STREAM_METRICS)
        )
        return [tuple(row) for row in session.execute(query)]  # type: ignore[misc]


def _status(job_id: str) -> str | None:
    with get_sessionmaker()() as session:
        return session.execute(select(Job.status).where(Job.id == job_id)).scalar()


async def _follow(
    request: Request, slot: StreamSlot, job_id: str, after: int, metrics_after_step: int | None
) -> AsyncIterator[str]:
    renewing = asyncio.create_task(slot.keep())
    try:
        async for chunk in _events_live(request, job_id, after, metrics_after_step):
            yield chunk
    finally:
        renewing.cancel()
        await slot.close()


async def _events_live(
    request: Request, job_id: str, after: int, metrics_after_step: int | None
) -> AsyncIterator[str]:
    last_metric = 0
    async with job_wakeups.follow(job_id) as news:
        while True:
            news.clear()
            # The status first: a job that has ended has all its events committed, so the
            # reads below see them all before the stream ends.
            status = await asyncio.to_thread(_status, job_id)
            rows = await asyncio.to_thread(_events_after, job_id, after, STREAM_EVENTS)
            for ev in rows:
                after = ev.id
                body = EventOut.model_validate(ev).model_dump_json()
                yield f"id: {ev.id}\nevent: {ev.type}\ndata: {body}\n\n"
            points = []
            if metrics_after_step is not None:
                # Metric points carry no event id: a reconnect asks for them by step instead.
                points = await asyncio.to_thread(
                    _metrics_after, job_id, last_metric, metrics_after_step
                )
                if points:
                    last_metric = points[-1][0]
                    body = json.dumps(
                        {"points": [{"name": n, "step": s, "value": v} for _, n, s, v in points]}
                    )
                    yield f"event: metrics\ndata: {body}\n\n"
            if len(rows) == STREAM_EVENTS or len(points) == STREAM_METRICS:
                continue  # more to send at once
            if status in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                return
            if await request.is_disconnected():
                return
            await news.wait(POLL_S)


@router.get("/{job_id}/events", response_model=Page[EventOut])
async def job_events(
    job_id: str,
    request: Request,
    project_id: ProjectDep,
    session: AsyncSessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, le=MAX_BIGINT)] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_BIGINT)] = None,
    metrics_after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
) -> object:
    """The job's event log, oldest first; `Accept: text/event-stream` follows it live (with
    `metrics_after_step`, the stream also carries `metrics` frames of the points past it)."""
    if "text/event-stream" in request.headers.get("accept", ""):
        job = await jobs.get_async(session=session, project_id=project_id, job_id=job_id)
        start = after if after is not None else (last_event_id or 0)
        slot = await streams.open(project_id)
        if slot is None:
            cap = settings.event_streams_per_project
            raise ApiError(
                429,
                "too_many_streams",
                f"this project already follows {cap} event streams; close one first",
                {"limit": cap},
                headers={"Retry-After": "5"},
            )
        return StreamingResponse(
            _follow(request, slot, job.id, start, metrics_after_step),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    query = jobs.of_owned_job(select(Event), Event.job_id, project_id=project_id, job_id=job_id)
    rows, more = await page_async(
        session, query, Event.id, limit=limit, after=after, newest_first=False
    )
    if not rows:
        await jobs.get_async(session=session, project_id=project_id, job_id=job_id)  # or 404
    return {"data": rows, "has_more": more}


@router.get("/{job_id}/metrics", response_model=MetricsOut)
async def job_metrics(
    job_id: str,
    project_id: ProjectDep,
    session: AsyncSessionDep,
    names: Annotated[
        list[Annotated[str, Query(max_length=32, pattern=r"^[A-Za-z0-9_./-]+$")]] | None,
        Query(alias="name", max_length=32),
    ] = None,
    after_step: Annotated[int, Query(ge=0, le=MAX_STEP)] = 0,
    limit: Annotated[int, Query(ge=100, le=10_000)] = 5000,
) -> MetricsOut:
    """Time series per metric (loss, val_loss, lr, grad_norm, tokens_per_s, mfu; with experts
    aux_loss, z_loss and expert_load.{layer}.{expert}), paged by step: at most `limit`
    points, whole steps only; then ask again with `after_step`."""
    query = jobs.of_owned_job(
        select(Metric.name, Metric.step, Metric.value),
        Metric.job_id,
        project_id=project_id,
        job_id=job_id,
    ).where(Metric.step > after_step)
    if names:
        query = query.where(Metric.name.in_(names))
    rows = list(
        await session.execute(query.order_by(Metric.step, Metric.name, Metric.id).limit(limit + 1))
    )
    if not rows:
        await jobs.get_async(session=session, project_id=project_id, job_id=job_id)  # or 404
    more = len(rows) > limit
    if more:  # end the page on a whole step, so after_step resumes where it stopped
        cut = rows[limit].step
        rows = [r for r in rows[:limit] if r.step < cut] or rows[:limit]
    series: dict[str, list[MetricPoint]] = {}
    for name, step, value in sorted(rows, key=lambda r: (r.name, r.step)):
        series.setdefault(name, []).append(MetricPoint(step=step, value=value))
    last = rows[-1].step if rows else None
    return MetricsOut(job_id=job_id, series=series, has_more=more, last_step=last)


@router.get("/{job_id}/checkpoints", response_model=Page[CheckpointOut])
def job_checkpoints(
    job_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> dict[str, object]:
    """The job's checkpoints with their step and metrics, oldest first."""
    job = jobs.get(session=session, project_id=project_id, job_id=job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    rows, more = page(session, query, Checkpoint.id, limit=limit, after=after, newest_first=False)
    return {"data": rows, "has_more": more}
