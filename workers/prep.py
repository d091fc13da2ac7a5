"""Prep worker tasks: validate an upload, clean a dataset, and prepare a job's token shards."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from domain import cleaning, datasets, prepare
from domain.db import session_scope
from trainyard.messaging import CLEAN_DATASET, PREPARE_JOB, VALIDATE_DATASET, get_app
from trainyard.settings import get_settings
from trainyard.storage import Storage

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
        datasets.validate(
            session=session,
            storage=Storage.from_settings(get_settings()),
            dataset_id=msg.dataset_id,
        )


@app.task(name=PREPARE_JOB)
def prepare_job(payload: dict[str, Any]) -> None:
    """Train the job's tokenizer if needed and tokenize its datasets once."""
    msg = JobPayload.model_validate(payload)
    with session_scope() as session:
        prepare.prepare(
            session=session, storage=Storage.from_settings(get_settings()), job_id=msg.job_id
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
