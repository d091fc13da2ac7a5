"""The control loop's side of a job's `preparing` phase: start it, skip it when the token
shards already exist, and re-send prep messages that seem lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain import claims
from domain.db import utcnow
from domain.lease import db_now
from domain.lifecycle import JobStatus, fail, record, transition
from domain.orm import Dataset, DatasetTokens, Job, PrepClaim, Tokenizer
from trainyard.messaging import CLEAN_DATASET, PREPARE_JOB, VALIDATE_DATASET, Message
from trainyard.settings import Settings
from trainyard.specs import FINE_TUNING


def _already_tokenized(session: Session, job: Job, dataset_ids: list[str]) -> bool:
    if job.type in FINE_TUNING:
        return False  # the prep worker finds its own shards in a moment
    key = str(job.tokenizer_key)
    if key != "byte":
        tok = session.get(Tokenizer, key)
        if tok is None or tok.status != "ready":
            return False
    ready = session.execute(
        select(func.count()).where(
            DatasetTokens.dataset_id.in_(dataset_ids),
            DatasetTokens.tokenizer_key == key,
            DatasetTokens.status == "ready",
        )
    ).scalar()
    return ready == len(dataset_ids)


def start_preparing(session: Session, settings: Settings, out: list[Message]) -> None:
    """Move queued jobs whose datasets are ready to `preparing`, failing those whose data
    is unusable; the prep messages go to `out`."""
    for job in session.execute(
        select(Job).where(Job.status == JobStatus.QUEUED, Job.prepared.is_(False))
    ).scalars():
        ids = [i for i in (job.dataset_id, job.spec["validation"].get("dataset_id")) if i]
        datasets = {i: session.get(Dataset, i) for i in ids}
        unusable = [
            (i, d) for i, d in datasets.items() if d is None or d.status in ("invalid", "deleted")
        ]
        if unusable:
            dataset_id, dataset = unusable[0]
            first = (dataset.errors or [{}])[0] if dataset else {}
            where = f" (line {first['line']}: {first['message']})" if first.get("line") else ""
            status = dataset.status if dataset else "gone"
            fail(session, job, "invalid_dataset", f"dataset {dataset_id} is {status}{where}")
            continue
        if any(d is not None and d.status != "ready" for d in datasets.values()):
            continue  # validation still running
        if _already_tokenized(session, job, ids):
            # Shards from an earlier job: skip the prep worker's round trip.
            transition(session, job, JobStatus.PREPARING, "reusing token shards")
            job.prepared = True
            record(session, job, "prepared", "token shards ready (reused)")
            continue
        transition(session, job, JobStatus.PREPARING, "tokenizing the dataset")
        out.append((PREPARE_JOB, {"job_id": job.id}, settings.queue("prep")))


def wake_waiting(session: Session, settings: Settings, out: list[Message]) -> None:
    """Send again the prep message of each preparing job whose preparation waits on a claim
    (its own, or another worker's that made a delivery do nothing) that can no longer bring
    it forward: its worker went quiet (every claim time at most, until another takes over),
    or it ended and the job's own worker is not carrying on from it."""
    ttl = timedelta(seconds=settings.prep_claim_seconds)
    quiet = db_now(session) - ttl
    waiting = session.execute(
        select(Job, PrepClaim)
        .outerjoin(PrepClaim, PrepClaim.id == Job.prep_waiting_for)
        .where(
            Job.status == JobStatus.PREPARING,
            Job.prepared.is_(False),
            Job.prep_waiting_for.is_not(None),
        )
    ).all()
    for job, claim in waiting:
        if claim is not None and claim.status == claims.Status.ACTIVE:
            if claim.heartbeat_at >= quiet or job.updated_at >= utcnow() - ttl:
                continue  # working, or sent again less than a claim time ago
            job.updated_at = utcnow()
        elif claim is not None and claim.status == claims.Status.EXPIRED:
            successor = session.execute(
                select(PrepClaim.id).where(
                    PrepClaim.kind == claim.kind,
                    PrepClaim.dataset_id == claim.dataset_id,
                    PrepClaim.tokenizer_key == claim.tokenizer_key,
                    PrepClaim.status == claims.Status.ACTIVE,
                )
            ).scalar()
            job.prep_waiting_for = successor
            if successor is not None:
                continue  # another delivery took the work over: wait for that one
        elif (
            claim is not None
            and claim.status == claims.Status.DONE
            and claim.job_id == job.id
            and claim.ended_at is not None
            and claim.ended_at >= quiet
        ):
            continue  # the job's own worker goes on to its next piece
        else:
            job.prep_waiting_for = None
        out.append((PREPARE_JOB, {"job_id": job.id}, settings.queue("prep")))


def resend_prep(session: Session, settings: Settings, out: list[Message]) -> None:
    """Re-send prep messages that seem lost; the tasks check the database, so a duplicate
    of one still running does nothing."""
    wake_waiting(session, settings, out)
    stale = utcnow() - timedelta(seconds=settings.prep_timeout_seconds)
    for job in session.execute(
        select(Job).where(
            Job.status == JobStatus.PREPARING, Job.prepared.is_(False), Job.updated_at < stale
        )
    ).scalars():
        job.updated_at = utcnow()
        out.append((PREPARE_JOB, {"job_id": job.id}, settings.queue("prep")))
    for dataset in session.execute(
        select(Dataset).where(Dataset.status == "validating", Dataset.updated_at < stale)
    ).scalars():
        dataset.updated_at = utcnow()
        out.append((VALIDATE_DATASET, {"dataset_id": dataset.id}, settings.queue("prep")))
    # A cleaning pass touches its dataset as it goes: a quiet one has lost its task.
    for dataset in session.execute(
        select(Dataset).where(Dataset.status == "cleaning", Dataset.updated_at < stale)
    ).scalars():
        dataset.updated_at = utcnow()
        out.append((CLEAN_DATASET, {"dataset_id": dataset.id}, settings.queue("prep")))
