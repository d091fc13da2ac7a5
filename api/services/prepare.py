"""A job's `preparing` phase, run by the prep worker: tokenizer and token shards.

A dataset is tokenized once per tokenizer; later jobs that ask for the same pair reuse
the shards. Every step checks the database first, so a re-delivered task does nothing new.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.models import Dataset, DatasetTokens, Job, Tokenizer
from api.services.jobs import fail, record
from trainer import shards
from trainer import tokenizer as toks
from trainyard import datasets as formats
from trainyard.storage import Storage

log = logging.getLogger(__name__)
BPE_TRAINING_BYTES = 256 * 1024 * 1024  # enough text for a stable vocabulary


class PrepareError(Exception):
    """A problem with the job's data that the user must fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _write_tokenizer(path: Path, tok: toks.Tokenizer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tok.save(str(tmp))
    tmp.replace(path)


def _limited(docs: Iterator[str], budget: int) -> Iterator[str]:
    for doc in docs:
        yield doc
        budget -= len(doc)
        if budget <= 0:
            return


def ensure_tokenizer(session: Session, storage: Storage, key: str) -> Path:
    """The tokenizer file for a key, training the BPE tokenizer on first use."""
    path = storage.tokenizer_file(key)
    if key == "byte":
        if not path.exists():
            _write_tokenizer(path, toks.byte_tokenizer())
        return path
    row = session.get(Tokenizer, key)
    if row is None:
        raise PrepareError("tokenizer_missing", f"tokenizer {key} does not exist")
    if row.status == "ready" and path.exists():
        return path
    source = session.get(Dataset, row.source_dataset_id)
    if source is None or source.status != "ready":
        raise PrepareError("dataset_unusable", f"dataset {row.source_dataset_id} is not ready")
    docs = formats.documents(storage.dataset_source(source.id), source.format)
    tok = toks.train_bpe(_limited(docs, BPE_TRAINING_BYTES), row.vocab_size)
    _write_tokenizer(path, tok)
    row.status = "ready"
    session.commit()
    return path


def ensure_tokens(
    session: Session, storage: Storage, dataset: Dataset, key: str, tokenizer_path: Path
) -> dict[str, object]:
    """The shard index of a dataset under a tokenizer, tokenizing it on first use."""
    out = storage.tokens_dir(dataset.id, key)
    row = session.execute(
        select(DatasetTokens).where(
            DatasetTokens.dataset_id == dataset.id, DatasetTokens.tokenizer_key == key
        )
    ).scalar()
    if row is not None and row.status == "ready" and (out / "index.json").exists():
        return dict(json.loads((out / "index.json").read_text()))
    if row is None:
        row = DatasetTokens(dataset_id=dataset.id, tokenizer_key=key)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            row = session.execute(
                select(DatasetTokens).where(
                    DatasetTokens.dataset_id == dataset.id, DatasetTokens.tokenizer_key == key
                )
            ).scalar_one()
        session.commit()
    docs = formats.documents(storage.dataset_source(dataset.id), dataset.format)
    index = shards.write_shards(
        docs, str(tokenizer_path), str(out), append_eot=dataset.format == "jsonl"
    )
    row.status, row.tokens, row.dtype = "ready", int(index["tokens"]), str(index["dtype"])
    session.commit()
    return index


def prepare(*, session: Session, storage: Storage, job_id: str) -> None:
    """Tokenize what a job needs, then mark it prepared (or failed, with the reason)."""
    job = session.get(Job, job_id)
    if job is None or job.status != "preparing" or job.prepared:
        return
    try:
        tokenizer_path = ensure_tokenizer(session, storage, str(job.tokenizer_key))
        seq_len = job.spec["training"]["seq_len"]
        counts = {}
        dataset_ids = [job.dataset_id]
        val_id = job.spec["validation"].get("dataset_id")
        if val_id:
            dataset_ids.append(val_id)
        for dataset_id in dataset_ids:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None or dataset.status != "ready":
                raise PrepareError("dataset_unusable", f"dataset {dataset_id} is not ready")
            index = ensure_tokens(session, storage, dataset, str(job.tokenizer_key), tokenizer_path)
            counts[dataset_id] = int(index["tokens"])  # type: ignore[call-overload]
            if counts[dataset_id] < 2 * (seq_len + 1):
                raise PrepareError(
                    "dataset_too_small",
                    f"dataset {dataset_id} has {counts[dataset_id]} tokens; training with "
                    f"seq_len {seq_len} needs at least {2 * (seq_len + 1)}",
                )
    except Exception as exc:
        session.rollback()
        code = exc.code if isinstance(exc, PrepareError) else "preparation_failed"
        message = str(exc) if isinstance(exc, PrepareError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, PrepareError):
            log.exception("preparing job %s failed", job_id)
        job = session.get(Job, job_id)
        assert job is not None
        fail(session, job, code, message)
        session.commit()
        return
    session.refresh(job)
    if job.status != "preparing":
        return  # cancelled while we worked
    job.prepared = True
    record(session, job, "prepared", "token shards ready", tokens=counts)
    session.commit()
