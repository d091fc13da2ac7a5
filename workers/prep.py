"""Prep worker tasks: validate an upload, and prepare a job's token shards."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from api.db import session_scope
from api.deps import get_storage
from api.services import datasets, prepare
from workers.celery_app import PREPARE_JOB, VALIDATE_DATASET, get_app

log = logging.getLogger(__name__)
app = get_app()


class DatasetPayload(BaseModel):
    dataset_id: str


class JobPayload(BaseModel):
    job_id: str


@app.task(name=VALIDATE_DATASET)
def validate_dataset(payload: dict[str, Any]) -> None:
    """Check a new dataset line by line; mark it ready or invalid."""
    msg = DatasetPayload.model_validate(payload)
    with session_scope() as session:
        datasets.validate(session=session, storage=get_storage(), dataset_id=msg.dataset_id)


@app.task(name=PREPARE_JOB)
def prepare_job(payload: dict[str, Any]) -> None:
    """Train the job's tokenizer if needed and tokenize its datasets once."""
    msg = JobPayload.model_validate(payload)
    with session_scope() as session:
        prepare.prepare(session=session, storage=get_storage(), job_id=msg.job_id)
