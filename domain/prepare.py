"""A job's `preparing` phase, run by the prep worker: tokenizer and token shards.

A dataset is tokenized once per tokenizer; later jobs that ask for the same pair reuse
the shards. Every step checks the database first, so a re-delivered task does nothing new.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from domain.lifecycle import JobStatus, fail, record
from domain.orm import Dataset, DatasetTokens, Job, Tokenizer
from trainer import sft_shards, shards
from trainer import tokenizer as toks
from trainyard import datasets as formats
from trainyard.specs import FINE_TUNING, tuning
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


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)


def _split(
    records: Iterator[dict[str, Any]], fraction: float | None, val: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """Yield the training records; every k-th record goes to `val` instead (k = 1/fraction)."""
    every = max(2, round(1 / fraction)) if fraction else 0
    for i, example in enumerate(records):
        if every and i % every == every - 1:
            val.append(example)
        else:
            yield example


def _prompt(record: dict[str, Any]) -> dict[str, Any]:
    """The conversation up to its last assistant turn, and that turn as the reference (for a
    preference pair: its prompt, and the preferred answer)."""
    if "input" in record:
        return {
            "messages": record["input"]["messages"],
            "reference": record["preferred_output"][0]["content"],
        }
    messages = record.get("messages") or [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"messages": messages[:last], "reference": messages[last]["content"]}


def prepare_sft(session: Session, storage: Storage, job: Job) -> dict[str, Any]:
    """Tokenize a fine-tuning job's chat examples (or preference pairs) with its base model's
    tokenizer, once per (dataset, base model, kind, seq_len, overlong policy, split)."""
    spec = job.spec
    key = str(job.tokenizer_key)
    out = storage.sft_tokens_dir(job.dataset_id, key)
    if (out / "train" / "index.json").exists() and (out / "eval_prompts.json").exists():
        train = json.loads((out / "train" / "index.json").read_text())
        return {"train": train, "reused": True}
    base_tokenizer = storage.model_dir(key.partition("/")[0]) / "tokenizer.json"
    dataset = session.get(Dataset, job.dataset_id)
    assert dataset is not None
    seq_len, overlong = spec["training"]["seq_len"], tuning(spec)["overlong"]
    kind: sft_shards.Kind = "dpo" if job.type == "dpo" else "sft"
    val_records: list[dict[str, Any]] = []
    fraction = spec["validation"].get("fraction")
    val_id = spec["validation"].get("dataset_id")
    records = _records(storage.dataset_source(dataset.id))
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        train = sft_shards.write_sft_shards(
            _split(records, None if val_id else fraction, val_records),
            str(base_tokenizer),
            str(staging / "train"),
            seq_len=seq_len,
            overlong=overlong,
            kind=kind,
        )
    except ValueError as exc:
        raise PrepareError("dataset_unusable", f"dataset {dataset.id}: {exc}") from exc
    if val_id:
        val_records = list(_records(storage.dataset_source(val_id)))
    val = None
    if val_records:
        val = sft_shards.write_sft_shards(
            iter(val_records),
            str(base_tokenizer),
            str(staging / "val"),
            seq_len=seq_len,
            overlong=overlong,
            kind=kind,
        )
    prompts = [_prompt(r) for r in val_records[: tuning(spec)["eval_prompts"]]]
    (staging / "eval_prompts.json").write_text(json.dumps(prompts))
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    summary = {
        k: train[k]
        for k in (
            "examples",
            "tokens",
            "loss_tokens",
            "overlong",
            "truncated",
            "dropped_overlong",
            "dropped_no_loss",
        )
    }
    return {
        "train": summary,
        "val_examples": val["examples"] if val else 0,
        "overlong_policy": overlong,
        "reused": False,
    }


def count_delivery(*, session: Session, job_id: str, limit: int) -> bool:
    """Count one delivery of a job's preparation; past `limit` (each earlier one died or
    was killed) fail the job instead and answer False."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status != JobStatus.PREPARING or job.prepared:
        session.rollback()
        return True  # the task itself sees there is nothing to do
    job.prep_deliveries += 1
    session.commit()
    if job.prep_deliveries <= limit:
        return True
    give_up(
        session=session,
        job_id=job_id,
        message=f"preparation stopped {limit} times before it finished (time limit or crash)",
    )
    return False


def give_up(*, session: Session, job_id: str, message: str) -> None:
    """Fail a job whose preparation cannot finish, with the reason."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.PREPARING:
        return
    fail(session, job, "preparation_failed", message)
    session.commit()


def prepare(*, session: Session, storage: Storage, job_id: str) -> None:
    """Tokenize what a job needs, then mark it prepared (or failed, with the reason)."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.PREPARING or job.prepared:
        return
    try:
        if job.type in FINE_TUNING:
            report: dict[str, Any] = prepare_sft(session, storage, job)
            what = "preference pairs" if job.type == "dpo" else "examples"
            message = f"chat {what} tokenized"
            train = report["train"]
            if train.get("overlong"):
                action = "truncated" if tuning(job.spec)["overlong"] == "truncate" else "dropped"
                message += (
                    f"; {train['overlong']} {what} exceed seq_len "
                    f"{job.spec['training']['seq_len']} and were {action}"
                )
        else:
            report = {"tokens": _prepare_tokens(session, storage, job)}
            message = "token shards ready"
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
    if job.status != JobStatus.PREPARING:
        return  # cancelled while we worked
    job.prepared = True
    record(session, job, "prepared", message, **report)
    session.commit()


def _prepare_tokens(session: Session, storage: Storage, job: Job) -> dict[str, int]:
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
    return counts
