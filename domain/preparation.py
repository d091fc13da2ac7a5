"""The control loop's side of a job's `preparing` phase: start it, skip it when the token
shards already exist, and re-send prep messages that seem lost."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.lifecycle import JobStatus, fail, record, transition
from domain.orm import Dataset, DatasetTokens, Job, Tokenizer
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


def resend_prep(session: Session, settings: Settings, out: list[Message]) -> None:
    """Re-send prep messages that seem lost; the tasks check the database, so a duplicate
    of one still running does nothing."""
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
