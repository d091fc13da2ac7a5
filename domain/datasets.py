"""Datasets: commit an upload, list, show, delete, and record the prep worker's verdict."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import webhooks
from domain.access import owned
from domain.errors import BadInput, Conflict
from domain.lifecycle import ACTIVE
from domain.orm import Dataset, Job
from domain.uploads import Upload
from trainyard import datasets as formats
from trainyard.ids import new_id
from trainyard.messaging import VALIDATE_DATASET, send
from trainyard.storage import Storage

log = logging.getLogger(__name__)


def create(
    *, session: Session, storage: Storage, project_id: str, upload: Upload, queue: str | None
) -> Dataset:
    """Move a received upload into place, record it, and queue its validation (or, with no
    queue, validate it here before answering: blocking, call it from a worker thread)."""
    if upload.size == 0:
        upload.path.unlink(missing_ok=True)
        raise BadInput("empty_file", "the uploaded file is empty")
    detected = formats.detect(upload.head, upload.filename)
    name = (upload.fields.get("name") or upload.filename or "dataset").strip()[:200]
    dataset = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        name=name,
        filename=upload.filename,
        format=detected.format,
        kind=detected.kind,
        status="validating",
        bytes=upload.size,
        sha256=upload.sha256,
    )
    target = storage.dataset_source(dataset.id)
    target.parent.mkdir(parents=True, exist_ok=True)
    upload.path.replace(target)
    try:
        session.add(dataset)
        session.commit()
    except BaseException:
        storage.remove_dataset(dataset.id)
        raise
    if queue is None:
        validate(session=session, storage=storage, dataset_id=dataset.id)
    else:
        send(VALIDATE_DATASET, {"dataset_id": dataset.id}, queue)
    return dataset


def get(*, session: Session, project_id: str, dataset_id: str) -> Dataset:
    """A dataset of the caller's project, or a 404."""
    return owned(session, Dataset, dataset_id, project_id, "dataset")


def delete(*, session: Session, storage: Storage, project_id: str, dataset_id: str) -> None:
    """Delete a dataset no active job uses."""
    dataset = get(session=session, project_id=project_id, dataset_id=dataset_id)
    in_use = session.execute(
        select(Job.id).where(Job.dataset_id == dataset.id, Job.status.in_(ACTIVE)).limit(1)
    ).first()
    if in_use:
        raise Conflict("dataset_in_use", f"job {in_use[0]} still uses dataset {dataset.id}")
    used = session.execute(select(Job.id).where(Job.dataset_id == dataset.id).limit(1)).first()
    if used:
        # Finished jobs keep their history; the files go, the row stays as a tombstone.
        dataset.status = "deleted"
        session.commit()
    else:
        session.delete(dataset)
        session.commit()
    storage.remove_dataset(dataset.id)


def validate(*, session: Session, storage: Storage, dataset_id: str) -> Dataset | None:
    """Check a dataset's lines and mark it `ready` or `invalid` (prep worker; idempotent)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.status != "validating":
        return dataset  # deleted, or a duplicate delivery of a task already done
    report = formats.validate(storage.dataset_source(dataset.id), dataset.format, dataset.kind)
    dataset.errors = report.errors
    if report.ok:
        dataset.status, dataset.records = "ready", report.records
    else:
        dataset.status = "invalid"
    webhooks.dataset_checked(session, dataset)
    session.commit()
    log.info("dataset %s is %s (%s records)", dataset.id, dataset.status, report.records)
    return dataset
