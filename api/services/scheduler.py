"""The control loop's work: dispatch queued jobs to nodes, and reconcile what went quiet.

One tick reads the database, decides, and commits; messages are sent after the commit, so
a crash between the two leaves a record the reconciler will find and settle.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.db import utcnow
from api.models import Attempt, Dataset, DatasetTokens, Job, Lease, Node, Tokenizer
from api.services.attempts import requeue
from api.services.jobs import ACTIVE_ATTEMPT, fail, record, transition
from trainer import shards
from trainyard.ids import hash_secret, new_id
from trainyard.settings import Settings
from trainyard.storage import Storage
from workers.celery_app import PREPARE_JOB, RUN_ATTEMPT, VALIDATE_DATASET, send

log = logging.getLogger(__name__)
Message = tuple[str, dict[str, Any], str]


def hold_lease(session: Session, name: str, holder: str, ttl: float) -> bool:
    """Take or renew a named lease; True while this holder is the leader."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    taken = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
        .values(holder=holder, expires_at=expires)
    ).rowcount  # type: ignore[attr-defined]
    if not taken and session.get(Lease, name) is None:
        session.add(Lease(name=name, holder=holder, expires_at=expires))
        try:
            session.commit()
            return True
        except Exception:  # another process inserted it first
            session.rollback()
            return False
    session.commit()
    return bool(taken)


def _free_slots(session: Session) -> dict[str, int]:
    used = dict(
        session.execute(
            select(Attempt.node_id, func.sum(Attempt.slots))
            .where(Attempt.status.in_(ACTIVE_ATTEMPT))
            .group_by(Attempt.node_id)
        ).all()
    )
    nodes = session.execute(select(Node).where(Node.status == "online")).scalars()
    return {n.id: n.slots - int(used.get(n.id) or 0) for n in nodes}


def _pick_node(session: Session, job: Job, free: dict[str, int]) -> Node | None:
    res = job.spec["resources"]
    want = res["processes_per_node"]
    for node in session.execute(
        select(Node).where(Node.status == "online", Node.pool == res["pool"]).order_by(Node.name)
    ).scalars():
        if res["accelerator"] not in ("auto", node.accelerator):
            continue
        if free.get(node.id, 0) >= want:
            return node
    return None


def _ranges(storage: Storage, job: Job) -> dict[str, Any]:
    key = str(job.tokenizer_key)
    main_dir = storage.tokens_dir(job.dataset_id, key)
    index = shards.load_index(str(main_dir))
    val_id = job.spec["validation"].get("dataset_id")
    if val_id:
        val_dir = storage.tokens_dir(val_id, key)
        train, _ = shards.split_ranges(index, str(main_dir), 0.0)
        _, val = shards.split_ranges(shards.load_index(str(val_dir)), str(val_dir), 1.0)
    else:
        train, val = shards.split_ranges(index, str(main_dir), job.spec["validation"]["fraction"])
    return {
        "dtype": index["dtype"],
        "eot_id": index["eot_id"],
        "vocab_size": index["vocab_size"],
        "train": train,
        "val": val,
    }


def run_config(
    storage: Storage, settings: Settings, job: Job, number: int, node: Node
) -> dict[str, Any]:
    """The trainer's run.json for one attempt."""
    spec = job.spec
    training = dict(spec["training"])
    out = storage.attempt_dir(job.id, number)
    config: dict[str, Any] = {
        "job_id": job.id,
        "attempt": number,
        "type": job.type,
        "training": training,
        "resources": {"accelerator": node.accelerator, "strategy": spec["resources"]["strategy"]},
        "output_dir": str(out),
        "checkpoint_dir": str(storage.checkpoint_dir(job.id)),
        "export_dir": str(out / "export"),
        "keep_checkpoints": settings.keep_checkpoints,
    }
    if job.type == "sft":
        return {**config, **_sft_config(storage, job)}
    data = _ranges(storage, job)
    model = {
        k: v
        for k, v in spec["model"].items()
        if k not in ("preset", "base_model_id") and v is not None
    }
    # A BPE trained on a small corpus can stop short of the vocabulary asked for; the model
    # keeps the size the spec names, so the job runs what it says.
    vocab = max(int(data.pop("vocab_size")), int(spec["tokenizer"]["vocab_size"] or 0))
    model.update(vocab_size=vocab, seq_len=training["seq_len"], dropout=training["dropout"])
    return {
        **config,
        "model": model,
        "tokenizer_path": str(storage.tokenizer_file(str(job.tokenizer_key))),
        "data": data,
    }


def _sft_config(storage: Storage, job: Job) -> dict[str, Any]:
    sft = job.spec["sft"]
    shards_dir = storage.sft_tokens_dir(job.dataset_id, str(job.tokenizer_key))
    prompts = json.loads((shards_dir / "eval_prompts.json").read_text())
    val = shards_dir / "val"
    lora = sft["lora"] or {}
    return {
        "tokenizer_path": str(shards_dir / "train" / "tokenizer.json"),
        "data": {
            "format": "sft",
            "train": str(shards_dir / "train"),
            "val": str(val) if val.exists() else None,
        },
        "sft": {
            "base_model_dir": str(storage.model_dir(str(job.tokenizer_key).partition("/")[0])),
            "method": sft["method"],
            "lora": {k: v for k, v in lora.items() if v is not None},
            "packing": sft["packing"],
            "epochs": sft["epochs"],
            "eval_prompts": [p["messages"] for p in prompts],
        },
    }


def _dispatch(session: Session, storage: Storage, settings: Settings, out: list[Message]) -> None:
    free = _free_slots(session)
    waiting = (
        session.execute(
            select(Job)
            .where(Job.status.in_(("queued", "preparing")), Job.prepared.is_(True))
            .order_by(Job.created_at)
        )
        .scalars()
        .all()
    )
    for job in waiting:
        busy = session.execute(
            select(Attempt.id).where(Attempt.job_id == job.id, Attempt.status.in_(ACTIVE_ATTEMPT))
        ).first()
        if busy:
            continue
        node = _pick_node(session, job, free)
        if node is None:
            continue
        number = job.attempt + 1
        try:
            config = run_config(storage, settings, job, number, node)
        except (OSError, ValueError) as exc:
            fail(session, job, "preparation_failed", f"token shards unusable: {exc}")
            continue
        folder = Path(config["output_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps(config, indent=2))
        token = secrets.token_urlsafe(32)
        slots = job.spec["resources"]["processes_per_node"]
        attempt = Attempt(
            id=new_id("att"),
            job_id=job.id,
            number=number,
            node_id=node.id,
            slots=slots,
            token_hash=hash_secret(token),
        )
        session.add(attempt)
        job.attempt = number
        free[node.id] -= slots
        record(
            session,
            job,
            "scheduled",
            f"attempt {number} assigned to node {node.name}",
            node=node.name,
            attempt=number,
        )
        out.append(
            (
                RUN_ATTEMPT,
                {
                    "attempt_id": attempt.id,
                    "job_id": job.id,
                    "attempt": number,
                    "token": token,
                    "run_config": str(folder / "run.json"),
                    "nproc": slots,
                },
                node.queue,
            )
        )


def _already_tokenized(session: Session, job: Job, dataset_ids: list[str]) -> bool:
    if job.type == "sft":
        return False  # the prep worker finds its own shards in a moment
    key = str(job.tokenizer_key)
    if key != "byte":
        tok = session.get(Tokenizer, key)
        if tok is None or tok.status != "ready":
            return False
    ready = session.execute(
        select(func.count()).where(
            DatasetTokens.dataset_id.in_(dataset_ids),
            DatasetTokens.tokenizer_key == key,
            DatasetTokens.status == "ready",
        )
    ).scalar()
    return ready == len(dataset_ids)


def _start_preparing(session: Session, settings: Settings, out: list[Message]) -> None:
    for job in session.execute(
        select(Job).where(Job.status == "queued", Job.prepared.is_(False))
    ).scalars():
        ids = [i for i in (job.dataset_id, job.spec["validation"].get("dataset_id")) if i]
        datasets = {i: session.get(Dataset, i) for i in ids}
        unusable = [
            (i, d) for i, d in datasets.items() if d is None or d.status in ("invalid", "deleted")
        ]
        if unusable:
            dataset_id, dataset = unusable[0]
            first = (dataset.errors or [{}])[0] if dataset else {}
            where = f" (line {first['line']}: {first['message']})" if first.get("line") else ""
            status = dataset.status if dataset else "gone"
            fail(session, job, "invalid_dataset", f"dataset {dataset_id} is {status}{where}")
            continue
        if any(d is not None and d.status != "ready" for d in datasets.values()):
            continue  # validation still running
        if _already_tokenized(session, job, ids):
            # Shards from an earlier job: skip the prep worker's round trip.
            transition(session, job, "preparing", "reusing token shards")
            job.prepared = True
            record(session, job, "prepared", "token shards ready (reused)")
            continue
        transition(session, job, "preparing", "tokenizing the dataset")
        out.append((PREPARE_JOB, {"job_id": job.id}, settings.queue("prep")))


def _resend_prep(session: Session, settings: Settings, out: list[Message]) -> None:
    """Re-send prep messages that seem lost; the tasks check the database, so a duplicate
    of one still running does nothing."""
    stale = utcnow() - timedelta(seconds=settings.prep_timeout_seconds)
    for job in session.execute(
        select(Job).where(
            Job.status == "preparing", Job.prepared.is_(False), Job.updated_at < stale
        )
    ).scalars():
        job.updated_at = utcnow()
        out.append((PREPARE_JOB, {"job_id": job.id}, settings.queue("prep")))
    for dataset in session.execute(
        select(Dataset).where(Dataset.status == "validating", Dataset.updated_at < stale)
    ).scalars():
        dataset.updated_at = utcnow()
        out.append((VALIDATE_DATASET, {"dataset_id": dataset.id}, settings.queue("prep")))


def _reconcile(session: Session, settings: Settings) -> None:
    now = utcnow()
    quiet = now - timedelta(seconds=settings.node_timeout_seconds)
    session.execute(
        update(Node)
        .where(Node.status == "online", Node.heartbeat_at < quiet)
        .values(status="offline")
    )
    never_started = now - timedelta(seconds=settings.attempt_timeout_seconds)
    lost = (
        session.execute(
            select(Attempt).where(
                ((Attempt.status == "running") & (Attempt.heartbeat_at < quiet))
                | ((Attempt.status == "starting") & (Attempt.created_at < never_started))
            )
        )
        .scalars()
        .all()
    )
    for attempt in lost:
        job = session.get(Job, attempt.job_id)
        was = attempt.status
        attempt.status, attempt.finished_at = "lost", now
        if job is not None:
            reason = "node stopped reporting" if was == "running" else "node never started it"
            requeue(session, job, f"attempt {attempt.number} lost: {reason}", settings.max_attempts)
    for job in session.execute(select(Job).where(Job.status == "cancelling")).scalars():
        live = session.execute(
            select(Attempt.id).where(Attempt.job_id == job.id, Attempt.status.in_(ACTIVE_ATTEMPT))
        ).first()
        if not live:
            transition(session, job, "cancelled", "cancelled by the user")


def tick(session: Session, storage: Storage, settings: Settings) -> int:
    """One pass of the control loop; returns how many messages it sent."""
    messages: list[Message] = []
    _reconcile(session, settings)
    _resend_prep(session, settings, messages)
    _start_preparing(session, settings, messages)
    _dispatch(session, storage, settings, messages)
    session.commit()
    for name, payload, queue in messages:
        send(name, payload, queue)
    return len(messages)
