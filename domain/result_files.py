"""A fine-tuning job's result file: the CSV of step metrics that OpenAI's fine-tuning jobs
produce, one row per step, a cell left empty where the step has no such value:

    step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy

It is a dataset of kind `results` (format `csv`), so one row serves both APIs: a file of
purpose `fine-tune-results` on the OpenAI routes, listed in the job's `result_files`. The
row is recorded when the job succeeds, with the size and hash of its text; the text is
written once, from the job's metrics alone, and no job can train on it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.orm import Dataset, Job, Metric
from trainyard.ids import new_id
from trainyard.specs import FINE_TUNING
from trainyard.storage import Storage

log = logging.getLogger(__name__)
KIND = "results"
FILENAME = "step_metrics.csv"
HEADER = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# The job's metric behind each column.
COLUMNS = {
    "loss": "train_loss",
    "token_accuracy": "train_accuracy",
    "val_loss": "valid_loss",
    "val_token_accuracy": "valid_mean_token_accuracy",
}


def csv_text(session: Session, job_id: str) -> tuple[str, int]:
    """The job's step metrics as CSV text, and its number of rows."""
    found = session.execute(
        select(Metric.step, Metric.name, Metric.value)
        .where(Metric.job_id == job_id, Metric.name.in_(tuple(COLUMNS)))
        .order_by(Metric.id)
    ).all()
    steps: dict[int, dict[str, float]] = {}
    for step, name, value in found:  # a step run again after a resume: its last value
        steps.setdefault(step, {})[COLUMNS[name]] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for step in sorted(steps):
        cells = steps[step]
        writer.writerow([step, *(cells.get(column, "") for column in HEADER[1:])])
    return out.getvalue(), len(steps)


def record(session: Session, job: Job) -> Dataset | None:
    """Record a succeeding fine-tuning job's result file (in the caller's transaction);
    None for other jobs."""
    if job.type not in FINE_TUNING:
        return None
    text, rows = csv_text(session, job.id)
    data = text.encode()
    dataset = Dataset(
        id=new_id("ds"),
        project_id=job.project_id,
        name=f"{job.id} {FILENAME}",
        filename=FILENAME,
        format="csv",
        kind=KIND,
        status="ready",
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        records=rows,
    )
    session.add(dataset)
    job.result_file_id = dataset.id
    return dataset


def write(*, session: Session, storage: Storage, dataset: Dataset) -> Path:
    """The result file's text on storage, written from the job's metrics if it is not yet
    (atomically: a reader sees all of it or none)."""
    path = storage.dataset_source(dataset.id)
    if path.exists():
        return path
    job_id = session.execute(select(Job.id).where(Job.result_file_id == dataset.id)).scalar()
    if job_id is None:
        raise ValueError(f"no job has {dataset.id} as its result file")
    text, _ = csv_text(session, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_after_commit(session: Session, storage: Storage, dataset: Dataset | None) -> None:
    """write() once the row is committed; a failure here leaves it for the first read."""
    if dataset is None:
        return
    try:
        write(session=session, storage=storage, dataset=dataset)
    except OSError:
        log.exception("result file %s not written yet; it will be on first read", dataset.id)
