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
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import claims
from domain.lifecycle import JobStatus, fail, record
from domain.orm import Dataset, DatasetTokens, Job, Tokenizer
from trainer import sft_shards, shards
from trainer import tokenizer as toks
from trainyard import datasets as formats
from trainyard.settings import get_settings
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


def _claim_time() -> float:
    return get_settings().prep_claim_seconds


def ensure_tokenizer(session: Session, storage: Storage, key: str, job_id: str) -> Path:
    """The tokenizer file for a key, training the BPE tokenizer on first use (under a claim:
    one worker trains it)."""
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
    claim = claims.take(
        session,
        kind=claims.Kind.TOKENIZER,
        dataset_id=source.id,
        key=key,
        target=path,
        ttl=_claim_time(),
        job_id=job_id,
    )
    session.refresh(row)
    if row.status == "ready" and path.exists():  # trained while this worker was claiming
        claims.release(session, claim)
        return path

    def train(result: Path) -> None:
        docs = claims.watched(
            formats.documents(storage.dataset_source(source.id), source.format), claim
        )
        toks.train_bpe(_limited(docs, BPE_TRAINING_BYTES), row.vocab_size).save(str(result))

    claims.build(session, claim, train)
    row.status = "ready"
    session.commit()
    return path


def ensure_tokens(
    session: Session,
    storage: Storage,
    dataset: Dataset,
    key: str,
    tokenizer_path: Path,
    job_id: str,
) -> dict[str, object]:
    """The shard index of a dataset under a tokenizer, tokenizing it on first use (under a
    claim: one worker tokenizes it)."""
    out = storage.tokens_dir(dataset.id, key)

    def ready() -> DatasetTokens | None:
        row = session.execute(
            select(DatasetTokens).where(
                DatasetTokens.dataset_id == dataset.id, DatasetTokens.tokenizer_key == key
            )
        ).scalar()
        return (
            row
            if row is not None and row.status == "ready" and (out / "index.json").exists()
            else None
        )

    if ready() is not None:
        return dict(json.loads((out / "index.json").read_text()))
    claim = claims.take(
        session,
        kind=claims.Kind.TOKENS,
        dataset_id=dataset.id,
        key=key,
        target=out,
        ttl=_claim_time(),
        job_id=job_id,
    )
    session.expire_all()
    if ready() is not None:  # tokenized while this worker was claiming
        claims.release(session, claim)
        return dict(json.loads((out / "index.json").read_text()))

    def tokenize(result: Path) -> dict[str, Any]:
        docs = claims.watched(
            formats.documents(storage.dataset_source(dataset.id), dataset.format), claim
        )
        return shards.write_shards(
            docs, str(tokenizer_path), str(result), append_eot=dataset.format == "jsonl"
        )

    index = claims.build(session, claim, tokenize)
    row = session.execute(
        select(DatasetTokens).where(
            DatasetTokens.dataset_id == dataset.id, DatasetTokens.tokenizer_key == key
        )
    ).scalar()
    if row is None:
        row = DatasetTokens(dataset_id=dataset.id, tokenizer_key=key)
        session.add(row)
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


def _sft_reused(out: Path) -> dict[str, Any] | None:
    """What an earlier job's chat shards in `out` hold, if they are complete."""
    if (out / "train" / "index.json").exists() and (out / "eval_prompts.json").exists():
        return {"train": json.loads((out / "train" / "index.json").read_text()), "reused": True}
    return None


def prepare_sft(session: Session, storage: Storage, job: Job) -> dict[str, Any]:
    """Tokenize a fine-tuning job's chat examples (or preference pairs) with its base model's
    tokenizer, once per (dataset, base model, kind, seq_len, overlong policy, split)."""
    spec = job.spec
    key = str(job.tokenizer_key)
    out = storage.sft_tokens_dir(job.dataset_id, key)
    base_tokenizer = storage.model_dir(key.partition("/")[0]) / "tokenizer.json"
    dataset = session.get(Dataset, job.dataset_id)
    assert dataset is not None
    seq_len, overlong = spec["training"]["seq_len"], tuning(spec)["overlong"]
    kind: sft_shards.Kind = "dpo" if job.type == "dpo" else "sft"
    fraction = spec["validation"].get("fraction")
    val_id = spec["validation"].get("dataset_id")
    if (reused := _sft_reused(out)) is not None:
        return reused
    claim = claims.take(
        session,
        kind=claims.Kind.SFT,
        dataset_id=dataset.id,
        key=key,
        target=out,
        ttl=_claim_time(),
        job_id=job.id,
    )
    if (reused := _sft_reused(out)) is not None:  # written while this worker was claiming
        claims.release(session, claim)
        return reused

    def tokenize(staging: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
        val_records: list[dict[str, Any]] = []
        records = claims.watched(_records(storage.dataset_source(dataset.id)), claim)
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
                claims.watched(iter(val_records), claim),
                str(base_tokenizer),
                str(staging / "val"),
                seq_len=seq_len,
                overlong=overlong,
                kind=kind,
            )
        prompts = [_prompt(r) for r in val_records[: tuning(spec)["eval_prompts"]]]
        (staging / "eval_prompts.json").write_text(json.dumps(prompts))
        return train, val

    train, val = claims.build(session, claim, tokenize)
    session.commit()
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
    except claims.Busy as busy:
        # Another worker is preparing what this job needs: this delivery does nothing (and
        # does not count against the job); the control loop sends the job again when that
        # claim ends or goes quiet.
        session.rollback()
        waiting = session.get(Job, job_id, with_for_update=True)
        assert waiting is not None
        waiting.prep_waiting_for = busy.claim_id
        waiting.prep_deliveries = max(0, waiting.prep_deliveries - 1)
        session.commit()
        log.info("job %s waits for prep claim %s of %s", job_id, busy.claim_id, busy.worker)
        return
    except claims.Lost as lost:
        # This worker went quiet and another took over its work: that one finishes it.
        session.rollback()
        log.warning("job %s: %s; nothing of it is kept", job_id, lost)
        return
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
    # Locked, so two deliveries that both found everything ready record it once.
    session.refresh(job, with_for_update=True)
    if job.status != JobStatus.PREPARING or job.prepared:
        session.rollback()
        return  # cancelled while we worked, or another delivery finished it
    job.prepared = True
    job.prep_waiting_for = None
    record(session, job, "prepared", message, **report)
    session.commit()


def _prepare_tokens(session: Session, storage: Storage, job: Job) -> dict[str, int]:
    tokenizer_path = ensure_tokenizer(session, storage, str(job.tokenizer_key), job.id)
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
        index = ensure_tokens(
            session, storage, dataset, str(job.tokenizer_key), tokenizer_path, job.id
        )
        counts[dataset_id] = int(index["tokens"])  # type: ignore[call-overload]
        if counts[dataset_id] < 2 * (seq_len + 1):
            raise PrepareError(
                "dataset_too_small",
                f"dataset {dataset_id} has {counts[dataset_id]} tokens; training with "
                f"seq_len {seq_len} needs at least {2 * (seq_len + 1)}",
            )
    return counts
