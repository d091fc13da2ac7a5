"""Prep worker tasks: validate an upload, clean a dataset, and prepare a job's token shards."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

from domain import cleaning, datasets, prepare
from domain.db import session_scope
from trainyard.messaging import CLEAN_DATASET, PREPARE_JOB, VALIDATE_DATASET, get_app
from trainyard.settings import get_settings
from trainyard.storage import Storage

log = logging.getLogger(__name__)
app = get_app()
# A task past the soft limit is stopped with its reason; one stuck in native code (a regex
# that backtracks) is killed at the hard limit and re-sent later, up to prep_max_deliveries.
HARD_LIMIT = get_settings().prep_timeout_seconds
SOFT_LIMIT = HARD_LIMIT * 0.9


class DatasetPayload(BaseModel):
    dataset_id: str


class JobPayload(BaseModel):
    job_id: str


@app.task(name=VALIDATE_DATASET, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT)
def validate_dataset(payload: dict[str, Any]) -> None:
    """Check a new dataset line by line; mark it ready or invalid."""
    msg = DatasetPayload.model_validate(payload)
    settings = get_settings()
    with session_scope() as session:
        if not datasets.count_delivery(
            session=session, dataset_id=msg.dataset_id, limit=settings.prep_max_deliveries
        ):
            return
        try:
            datasets.validate(
                session=session,
                storage=Storage.from_settings(settings),
                dataset_id=msg.dataset_id,
                max_line_bytes=settings.max_line_bytes,
            )
        except SoftTimeLimitExceeded:
            session.rollback()
            datasets.give_up(
                session=session,
                dataset_id=msg.dataset_id,
                message=f"validation took longer than its limit of {SOFT_LIMIT:g} s",
            )


@app.task(name=PREPARE_JOB, soft_time_limit=SOFT_LIMIT, time_limit=HARD_LIMIT)
def prepare_job(payload: dict[str, Any]) -> None:
    """Train the job's tokenizer if needed and tokenize its datasets once."""
    msg = JobPayload.model_validate(payload)
    settings = get_settings()
    with session_scope() as session:
        if not prepare.count_delivery(
            session=session, job_id=msg.job_id, limit=settings.prep_max_deliveries
        ):
            return
        try:
            prepare.prepare(
                session=session, storage=Storage.from_settings(settings), job_id=msg.job_id
            )
        except SoftTimeLimitExceeded:
            session.rollback()
            prepare.give_up(
                session=session,
                job_id=msg.job_id,
                message=f"preparation took longer than its limit of {SOFT_LIMIT:g} s",
            )


@app.task(name=CLEAN_DATASET)
def clean_dataset(payload: dict[str, Any]) -> None:
    """Clean a dataset's source into a new dataset in one streaming pass."""
    msg = DatasetPayload.model_validate(payload)
    with session_scope() as session:
        cleaning.run(
            session=session,
            storage=Storage.from_settings(get_settings()),
            dataset_id=msg.dataset_id,
        )
