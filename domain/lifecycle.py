"""The job state machine: its statuses, the moves between them, and the one function that
makes a move. Every writer of a job's status goes through `transition` (or `fail`, `requeue`).

    queued -> preparing -> running -> succeeded
       \\          \\          \\-----> failed
        \\          \\---------------> failed
         any non-terminal --cancel--> cancelling -> cancelled
     running --node lost / trainer crash--> queued (attempt + 1, resumes from latest checkpoint)
     running --preempted by a higher priority--> preempted --fits again--> running
     queued, preempted, running --pause--> paused --resume--> queued

Terminal states never change. A writer that reaches a terminal job late (a cancel that
raced the trainer's exit) changes nothing, as before; any other move the table does not
allow raises `IllegalTransition`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from domain import webhooks
from domain.db import utcnow
from domain.errors import IllegalTransition
from domain.orm import Event, Job


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PREEMPTED = "preempted"  # stopped for a job of higher priority; waits to run again
    PAUSED = "paused"  # checkpointed and off its nodes until resumed
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    """Where one attempt of a job is: `starting` until its node claims it."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"
    LOST = "lost"
    STOPPED = "stopped"  # stopped because another node of its gang failed
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = tuple(s for s in JobStatus if s not in TERMINAL)
ACTIVE_ATTEMPT = (AttemptStatus.STARTING, AttemptStatus.RUNNING)
# Jobs the scheduler may place on nodes (once prepared).
WAITING = (JobStatus.QUEUED, JobStatus.PREPARING, JobStatus.PREEMPTED)

_CANCEL = {JobStatus.CANCELLING, JobStatus.CANCELLED}
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # A requeued job is already prepared: it goes straight from queued to running.
    JobStatus.QUEUED: frozenset(
        {JobStatus.PREPARING, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.PAUSED, *_CANCEL}
    ),
    # An attempt that never started sends a preparing job back to the queue.
    JobStatus.PREPARING: frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.PAUSED, *_CANCEL}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.QUEUED,
            JobStatus.PREEMPTED,
            JobStatus.PAUSED,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            *_CANCEL,
        }
    ),
    JobStatus.PREEMPTED: frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.FAILED, *_CANCEL}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, *_CANCEL}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def record(session: Session, job: Job, type_: str, message: str, **data: Any) -> None:
    """Append an event to the job's log (the caller commits)."""
    session.add(
        Event(job_id=job.id, attempt=job.attempt or None, type=type_, message=message, data=data)
    )


def transition(session: Session, job: Job, status: JobStatus, reason: str, **data: Any) -> None:
    """Move a job to a new status with an event; the one way a job's status changes."""
    current = JobStatus(job.status)
    if current in TERMINAL or current == status:
        return
    if status not in TRANSITIONS[current]:
        raise IllegalTransition(current, status)
    job.status = status.value
    if status in TERMINAL:
        job.finished_at = utcnow()
    if status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = utcnow()
    record(session, job, "status", reason, status=status.value, previous=current.value, **data)
    webhooks.job_changed(session, job, status.value)


def fail(session: Session, job: Job, code: str, message: str) -> None:
    """End a job as `failed` with a machine-readable code and a message a person can act on."""
    if job.status in TERMINAL:
        return
    job.error_code, job.error_message = code, message  # before the event that reports them
    transition(session, job, JobStatus.FAILED, message, code=code)


def requeue(
    session: Session,
    job: Job,
    reason: str,
    *,
    tries: int,
    limit: int,
    code: str = "node_lost",
    status: JobStatus = JobStatus.QUEUED,
    **data: Any,
) -> None:
    """Put a job back in the queue for a new attempt (`status` queued or preempted), or fail
    it with `code` once `tries` has reached `limit`."""
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, "cancelled by the user")
    elif tries > limit:
        fail(session, job, code, f"{reason}; gave up after {tries - 1} retries")
    else:
        transition(session, job, status, reason, **data)
