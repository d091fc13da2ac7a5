"""Cleaned datasets: create one from a ready dataset, and clean it in the prep worker.

A cleaned dataset is a dataset like any other (same validation, same use in jobs) whose
`source_dataset_id` names the original; it is `cleaning` until the prep worker has written
it, then `ready` (or `invalid` when nothing survived), with a report of what each step did.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from domain.datasets import get
from domain.db import utcnow
from domain.errors import Conflict, Invalid, NotFound
from domain.orm import Dataset
from trainyard import datasets as formats
from trainyard.cleaning.pipeline import clean_file
from trainyard.cleaning.spec import CleaningSpec
from trainyard.ids import new_id
from trainyard.messaging import CLEAN_DATASET, send
from trainyard.storage import Storage

log = logging.getLogger(__name__)
CLEANING = "cleaning"


def create(
    *, session: Session, project_id: str, source_id: str, spec: CleaningSpec, queue: str
) -> Dataset:
    """Record a cleaned copy of a ready pretraining dataset and queue its cleaning."""
    source = get(session=session, project_id=project_id, dataset_id=source_id)
    if source.status == "deleted":
        raise NotFound("dataset", source_id)
    if source.status != "ready":
        raise Conflict(
            "dataset_not_ready",
            f"dataset {source.id} is {source.status}; only a ready dataset can be cleaned",
            {"status": source.status},
        )
    if source.kind != "pretrain":
        raise Invalid(
            "unsupported_kind",
            f"dataset {source.id} holds fine-tuning examples; cleaning applies to "
            "pretraining text (plain text, or JSONL with a 'text' field)",
            {"kind": source.kind},
        )
    dataset = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        name=f"{source.name} (cleaned)"[:200],
        filename=source.filename,
        format=source.format,
        kind=source.kind,
        status=CLEANING,
        bytes=0,
        sha256="",
        source_dataset_id=source.id,
        cleaning=spec.model_dump(mode="json"),
    )
    session.add(dataset)
    session.commit()
    send(CLEAN_DATASET, {"dataset_id": dataset.id}, queue)
    return dataset


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _touch(session: Session, dataset_id: str) -> None:
    """Tell the control loop the work goes on, so it does not re-send the task."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(updated_at=utcnow()))
    session.commit()


def run(*, session: Session, storage: Storage, dataset_id: str) -> Dataset | None:
    """Clean a dataset's source into it and record the report (prep worker; a duplicate
    delivery of a finished task does nothing)."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.status != CLEANING:
        return dataset
    source = session.get(Dataset, dataset.source_dataset_id)
    target = storage.dataset_source(dataset.id)
    if source is None or source.status != "ready":
        dataset.status = "invalid"
        dataset.errors = [
            {"line": None, "message": f"source dataset {dataset.source_dataset_id} is gone"}
        ]
        session.commit()
        return dataset
    spec = CleaningSpec.model_validate(dataset.cleaning or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    source_path, fmt = storage.dataset_source(source.id), source.format
    try:
        report = clean_file(
            source_path, target, fmt, spec, progress=lambda _: _touch(session, dataset_id)
        )
        checked = formats.validate(target, dataset.format, dataset.kind)
    except Exception as exc:
        session.rollback()
        current = session.get(Dataset, dataset_id)
        if current is None or current.status != CLEANING:
            return current  # deleted while we worked: its files went with it
        log.exception("cleaning dataset %s failed", dataset_id)
        current.status = "invalid"
        current.errors = [{"line": None, "message": f"cleaning failed: {exc}"}]
        session.commit()
        return current
    session.expire_all()
    current = session.get(Dataset, dataset_id)
    if current is None or current.status != CLEANING:
        return current  # deleted while we worked, or finished by a duplicate delivery
    dataset = current
    dataset.bytes, dataset.sha256 = target.stat().st_size, _sha256(target)
    dataset.cleaning_report = report.as_dict()
    dataset.errors = checked.errors
    if report.documents_out == 0:
        dataset.status = "invalid"
        dataset.errors = [{"line": None, "message": "cleaning removed every document"}]
    elif checked.ok:
        dataset.status, dataset.records = "ready", checked.records
    else:
        dataset.status = "invalid"
    session.commit()
    log.info(
        "dataset %s cleaned: %d of %d documents kept",
        dataset.id,
        report.documents_out,
        report.documents_in,
    )
    return dataset
