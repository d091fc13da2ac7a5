"""A job attempt as a gang: the rows of its nodes, and what the job becomes once the gang
has stopped.

Every node of an attempt has its own row (rank 0 to nodes - 1). When one fails, the others
are told to stop (their node workers see `stop_requested` on their next report); when no
node of the gang is active any more, `settle` decides, from the first failure:

- a node lost (lease expired) or shut down: the job resumes as a new attempt, at no cost;
- a trainer error the trainer named (NaN loss, out of memory, bad config): the job fails;
- any other trainer failure (a crash, a peer's collective error): a new attempt that counts
  against the job's `resources.max_restarts`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.lifecycle import (
    ACTIVE_ATTEMPT,
    TERMINAL,
    AttemptStatus,
    JobStatus,
    fail,
    record,
    requeue,
    transition,
)
from domain.orm import Attempt, Event, Job, Node

# Attempt statuses that end a gang early.
BROKEN = (
    AttemptStatus.FAILED,
    AttemptStatus.LOST,
    AttemptStatus.PREEMPTED,
    AttemptStatus.CANCELLED,
)
# Trainer error codes that a new attempt cannot cure.
RETRYABLE_CODES = ("trainer_error",)
TAIL_LINES = 20


def members(session: Session, job_id: str, number: int) -> list[Attempt]:
    """The rows of one attempt's gang, by rank."""
    return list(
        session.execute(
            select(Attempt)
            .where(Attempt.job_id == job_id, Attempt.number == number)
            .order_by(Attempt.rank)
        ).scalars()
    )


def stop_requested(session: Session, attempt: Attempt) -> bool:
    """Whether another node of this attempt's gang has failed, so this one must stop."""
    if attempt.nodes <= 1:
        return False
    return (
        session.execute(
            select(Attempt.id).where(
                Attempt.job_id == attempt.job_id,
                Attempt.number == attempt.number,
                Attempt.id != attempt.id,
                Attempt.status.in_(BROKEN),
            )
        ).first()
        is not None
    )


def _failed_at(attempt: Attempt) -> datetime:
    # A lost node failed when it last spoke, long before the reconciler noticed.
    if attempt.status == AttemptStatus.LOST:
        return attempt.heartbeat_at
    return attempt.finished_at or attempt.heartbeat_at


def _error_event(session: Session, job: Job, number: int) -> Event | None:
    return session.execute(
        select(Event)
        .where(Event.job_id == job.id, Event.attempt == number, Event.type == "error")
        .order_by(Event.id.desc())
        .limit(1)
    ).scalar()


def _lost_attempts(session: Session, job: Job) -> int:
    return int(
        session.execute(
            select(func.count(func.distinct(Attempt.number))).where(
                Attempt.job_id == job.id, Attempt.status == AttemptStatus.LOST
            )
        ).scalar()
        or 0
    )


def settle(session: Session, job: Job, number: int, *, max_lost_attempts: int) -> None:
    """Decide the job's fate once no node of attempt `number` is active (else wait)."""
    gang = members(session, job.id, number)
    if job.status in TERMINAL or job.attempt != number:
        return
    if any(m.status in ACTIVE_ATTEMPT for m in gang):
        return
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, "cancelled by the user")
        return
    if job.status in (JobStatus.PAUSED, JobStatus.PREEMPTED):
        return  # stopped on purpose: it waits to be resumed or to fit again, at no cost
    broken = [m for m in gang if m.status in BROKEN]
    if not broken:
        return  # rank 0 succeeded: the job was settled with it
    first = min(broken, key=_failed_at)
    node = session.get(Node, first.node_id)
    where = f"node {node.name if node else first.node_id}" + (
        f" (rank {first.rank} of {first.nodes})" if first.nodes > 1 else ""
    )
    tail = (first.log_tail or "").strip().splitlines()[-TAIL_LINES:]
    if first.nodes > 1:
        record(
            session,
            job,
            "gang_failed",
            f"attempt {number}: {where} failed first ({first.status})",
            node=node.name if node else None,
            rank=first.rank,
            status=first.status,
            exit_code=first.exit_code,
            log_tail="\n".join(tail),
        )
    lost = [m for m in gang if m.status == AttemptStatus.LOST]
    if lost:
        why = "node stopped reporting" if lost[0].started_at else "node never started it"
        lost_where = where if first in lost else f"node rank {lost[0].rank}"
        requeue(
            session,
            job,
            f"attempt {number} lost: {lost_where}: {why}",
            tries=_lost_attempts(session, job),
            limit=max_lost_attempts - 1,
        )
        return
    if any(m.status == AttemptStatus.PREEMPTED for m in gang):
        requeue(session, job, "preempted; resuming from the latest checkpoint", tries=0, limit=0)
        return
    error = _error_event(session, job, number)
    code = str(error.data.get("code", "trainer_error")) if error else "trainer_exit"
    if error is not None:
        message = error.message or code
    else:
        message = f"trainer exited with code {first.exit_code} on {where}"
        message += ("\n" + "\n".join(tail)) if tail else ""
    if code not in (*RETRYABLE_CODES, "trainer_exit"):
        fail(session, job, code, message)
        return
    job.restarts += 1
    limit = int(job.spec["resources"].get("max_restarts", 3))
    requeue(
        session,
        job,
        f"attempt {number} failed on {where}: {message.splitlines()[0] if message else code}; "
        f"restart {job.restarts} of {limit}",
        tries=job.restarts,
        limit=limit,
        code=code,
    )
    if job.status == JobStatus.FAILED:
        job.error_message = message + f"\n(gave up after {limit} restarts)"
