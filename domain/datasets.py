"""Datasets: commit an upload, list, show, delete, and record the prep worker's verdict."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import quotas, webhooks
from domain.access import owned
from domain.errors import BadInput, Conflict, Invalid, NotFound, QuotaExceeded
from domain.lifecycle import ACTIVE
from domain.orm import Dataset, Job
from domain.uploads import Upload
from trainyard import datasets as formats
from trainyard.ids import new_id
from trainyard.messaging import VALIDATE_DATASET, send
from trainyard.specs import NAME_LENGTH, check_name
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
    try:
        quotas.check_storage(session=session, project_id=project_id, adding=upload.size)
    except QuotaExceeded:
        upload.path.unlink(missing_ok=True)
        raise
    filename = check_name_or_none(upload.filename)
    name = (upload.fields.get("name") or filename or "dataset").strip()[:NAME_LENGTH]
    try:
        check_name(name)
    except ValueError as exc:
        upload.path.unlink(missing_ok=True)
        raise Invalid("invalid_name", f"name: {exc}") from exc
    detected = formats.detect(upload.head, upload.filename)
    dataset = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        name=name,
        filename=filename,
        format=detected.format,
        kind=detected.kind,
        status="validating",
        bytes=upload.size,
        sha256=upload.sha256,
    )
    try:
        session.add(dataset)
        session.commit()
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    # Moved into place only once the row that names it is committed: a crash before leaves
    # a temporary file that the sweep removes, never a folder no row knows.
    target = storage.dataset_source(dataset.id)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(target)
    except OSError:
        session.delete(dataset)
        session.commit()
        upload.path.unlink(missing_ok=True)
        raise
    if queue is None:
        validate(session=session, storage=storage, dataset_id=dataset.id)
    else:
        send(VALIDATE_DATASET, {"dataset_id": dataset.id}, queue)
    return dataset


def check_name_or_none(filename: str | None) -> str | None:
    """An uploaded file's name as kept (a label only), or None where it has control
    characters."""
    if filename is None:
        return None
    try:
        return check_name(filename[:255])
    except ValueError:
        return None


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


def count_delivery(*, session: Session, dataset_id: str, limit: int) -> bool:
    """Count one delivery of a dataset's validation; past `limit` (each earlier one died
    or was killed) mark it invalid instead and answer False."""
    dataset = session.get(Dataset, dataset_id, with_for_update=True)
    if dataset is None or dataset.status != "validating":
        session.rollback()
        return True  # the task itself sees there is nothing to do
    dataset.prep_deliveries += 1
    session.commit()
    if dataset.prep_deliveries <= limit:
        return True
    give_up(
        session=session,
        dataset_id=dataset_id,
        message=f"validation stopped {limit} times before it finished (time limit or crash)",
    )
    return False


def give_up(*, session: Session, dataset_id: str, message: str) -> None:
    """Mark a dataset that validation cannot finish as invalid, with the reason."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.status != "validating":
        return
    dataset.status, dataset.errors = "invalid", [{"line": None, "message": message}]
    session.commit()


def validate(
    *, session: Session, storage: Storage, dataset_id: str, max_line_bytes: int = 16 * 1024**2
) -> Dataset | None:
    """Check a dataset's lines and mark it `ready` or `invalid` (prep worker; idempotent)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.status != "validating":
        return dataset  # deleted, or a duplicate delivery of a task already done
    report = formats.validate(
        storage.dataset_source(dataset.id), dataset.format, dataset.kind, max_line_bytes
    )
    # Locked to the commit: of two deliveries that checked the file at once, one records
    # the verdict (and sends its webhook).
    session.refresh(dataset, with_for_update=True)
    if dataset.status != "validating":
        session.rollback()
        return dataset
    dataset.errors = report.errors
    if report.ok:
        dataset.status, dataset.records = "ready", report.records
    else:
        dataset.status = "invalid"
    webhooks.dataset_checked(session, dataset)
    session.commit()
    log.info("dataset %s is %s (%s records)", dataset.id, dataset.status, report.records)
    return dataset


def content(*, session: Session, storage: Storage, project_id: str, dataset_id: str) -> Path:
    """The file holding a dataset's text (a cleaned one's once it is written)."""
    dataset = get(session=session, project_id=project_id, dataset_id=dataset_id)
    if dataset.status == "deleted":
        raise NotFound("dataset", dataset_id)
    path = storage.dataset_source(dataset.id)
    if dataset.status == "cleaning" or not path.exists():
        raise Conflict(
            "dataset_not_ready",
            f"dataset {dataset.id} is {dataset.status}; its text is not written yet",
            {"status": dataset.status},
        )
    return path
