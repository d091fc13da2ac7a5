"""What node workers report about an attempt: start, trainer events, and the end.

Every call is idempotent: events carry sequence numbers and a replayed batch is skipped,
a second `start` or `finish` changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import gang, result_files
from domain.db import utcnow
from domain.errors import Conflict, NotFound
from domain.lifecycle import (
    ACTIVE_ATTEMPT,
    TERMINAL,
    AttemptStatus,
    JobStatus,
    record,
    transition,
)
from domain.orm import Attempt, Checkpoint, Event, Job, Metric, Model, Node
from trainer.config import EXIT_OK, EXIT_PREEMPTED
from trainyard.ids import hash_secret, new_id
from trainyard.storage import Storage

log = logging.getLogger(__name__)
STEP_METRICS = (
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "step_time",
    "peak_memory_bytes",
    "aux_loss",  # a mixture of experts' load-balancing loss
    "z_loss",  # and its router z-loss
    "token_accuracy",  # fine-tuning: share of answer tokens the model's top choice gets right
    # DPO (see trainer.dpo)
    "reward_margin",
    "reward_accuracy",
    "reward_chosen",
    "reward_rejected",
)


MAX_EXPERTS = 1024  # as trainer.config.MoEConfig allows


@dataclass(frozen=True)
class AttemptState:
    """What a node worker learns after each report: the attempt's status, whether to stop,
    the last event sequence number stored, and for a gang the rendezvous once rank 0 has
    started."""

    status: str
    cancel: bool
    last_seq: int
    master_addr: str | None = None
    master_port: int | None = None


def authorize(*, session: Session, attempt_id: str, token: str) -> Attempt:
    """The attempt the token was minted for, or a 404 that reveals nothing."""
    attempt = session.get(Attempt, attempt_id)
    if attempt is None or attempt.token_hash != hash_secret(token):
        raise NotFound("attempt", attempt_id)
    return attempt


def _master(session: Session, attempt: Attempt) -> tuple[str, int] | None:
    """The rendezvous of a gang (rank 0's node address and reserved port), once known."""
    if attempt.nodes <= 1:
        return None
    row = session.execute(
        select(Node.address, Node.host, Attempt.master_port)
        .join(Node, Node.id == Attempt.node_id)
        .where(
            Attempt.job_id == attempt.job_id,
            Attempt.number == attempt.number,
            Attempt.rank == 0,
        )
    ).first()
    if row is None or row[2] is None:
        return None
    return str(row[0] or row[1]), int(row[2])


def _state(session: Session, attempt: Attempt) -> AttemptState:
    job = session.get(Job, attempt.job_id)
    cancel = (
        bool(job and job.cancel_requested)
        or bool(job and job.status in (JobStatus.PAUSED, JobStatus.PREEMPTED))
        # Resumed before its node saw the pause: the old attempt still stops (it
        # checkpoints), and the next one resumes from there.
        or bool(job and job.status == JobStatus.QUEUED and attempt.status == AttemptStatus.RUNNING)
        or attempt.status not in ACTIVE_ATTEMPT
        or gang.stop_requested(session, attempt)
    )
    master = _master(session, attempt) if attempt.status in ACTIVE_ATTEMPT else None
    return AttemptState(
        status=attempt.status,
        cancel=cancel,
        last_seq=attempt.last_seq,
        master_addr=master[0] if master else None,
        master_port=master[1] if master else None,
    )


def start(*, session: Session, attempt: Attempt, master_port: int | None = None) -> AttemptState:
    """The node is about to launch torchrun; a duplicate delivery gets a 409.

    Rank 0 of a gang brings the port it reserved for the rendezvous; another rank stays
    `starting` (and is told so) until rank 0 has started, then gets the rendezvous.
    """
    # Two copies of the message may reach two threads at once: one start wins, under a lock.
    session.refresh(attempt, with_for_update=True)
    job = session.get(Job, attempt.job_id)
    assert job is not None
    if attempt.status != AttemptStatus.STARTING:
        raise Conflict("attempt_not_startable", f"attempt is {attempt.status}")
    attempt.outbox = None  # the node has the message: the outbox stops re-sending it
    if job.cancel_requested or job.status in TERMINAL:
        attempt.status, attempt.finished_at = AttemptStatus.CANCELLED.value, utcnow()
        transition(session, job, JobStatus.CANCELLED, "cancelled before training started")
        session.commit()
        raise Conflict("attempt_not_startable", "the job was cancelled")
    if job.status == JobStatus.PAUSED:
        attempt.status, attempt.finished_at = AttemptStatus.PREEMPTED.value, utcnow()
        session.commit()
        raise Conflict("attempt_not_startable", "the job was paused")
    if attempt.nodes > 1:
        if attempt.rank == 0:
            if master_port is None:
                raise Conflict("master_port_required", "rank 0 of a gang must bring a port")
            attempt.master_port = master_port
        elif _master(session, attempt) is None:
            session.commit()
            return _state(session, attempt)  # rank 0 has not started yet: ask again
    attempt.status = AttemptStatus.RUNNING.value
    attempt.started_at = attempt.heartbeat_at = utcnow()
    transition(
        session, job, JobStatus.RUNNING, f"attempt {attempt.number} started", attempt=attempt.number
    )
    session.commit()
    return _state(session, attempt)


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _expert_loads(loads: Any) -> list[tuple[str, float]]:
    """`expert_load.{layer}.{expert}` series from a step's {layer: [share per expert]}."""
    if not isinstance(loads, dict):
        return []
    out = []
    for layer, shares in loads.items():
        if not (str(layer).isdigit() and isinstance(shares, list)):
            continue
        for expert, share in enumerate(shares[:MAX_EXPERTS]):
            value = _finite(share)
            if value is not None:
                out.append((f"expert_load.{int(layer)}.{expert}", value))
    return out


def _latest(session: Session, job: Job, name: str) -> float | None:
    """The job's latest value of a step metric, if it reports one."""
    return session.execute(
        select(Metric.value)
        .where(Metric.job_id == job.id, Metric.name == name)
        .order_by(Metric.step.desc())
        .limit(1)
    ).scalar()


def _apply(session: Session, job: Job, attempt: Attempt, ev: dict[str, Any]) -> None:
    kind = str(ev.get("type", "log"))
    step = int(ev.get("step") or 0)
    if kind == "step":
        for name in STEP_METRICS:
            value = _finite(ev.get(name))
            if value is not None:
                session.add(Metric(job_id=job.id, step=step, name=name, value=value))
        for name, value in _expert_loads(ev.get("expert_load")):
            session.add(Metric(job_id=job.id, step=step, name=name, value=value))
        job.step, job.tokens = step, int(ev.get("tokens") or job.tokens)
        job.loss = _finite(ev.get("loss"))
        job.tokens_per_s = _finite(ev.get("tokens_per_s"))
        return  # steps live in metrics; the event log keeps the milestones
    if kind == "eval":
        for name, raw in ev.items():
            value = _finite(raw)
            if name.startswith("val_") and value is not None:
                session.add(Metric(job_id=job.id, step=step, name=name, value=value))
        if _finite(ev.get("val_loss")) is not None:
            job.val_loss = _finite(ev.get("val_loss"))
        # The training loss beside it, so the event alone tells the step's story.
        ev = {
            "train_loss": job.loss,
            "train_token_accuracy": _latest(session, job, "token_accuracy"),
            "total_steps": job.spec["training"]["max_steps"],
            **ev,
        }
    elif kind == "start":
        steps = ev.get("max_steps")
        if isinstance(steps, int) and steps != job.spec["training"]["max_steps"]:
            # Fine-tuning by epochs: the trainer counted the steps from the data.
            job.spec = {**job.spec, "training": {**job.spec["training"], "max_steps": steps}}
        job.params = ev.get("params") or job.params
        job.flops_per_token = _finite(ev.get("flops_per_token")) or job.flops_per_token
    elif kind == "checkpoint":
        exists = session.execute(
            select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
        ).first()
        if not exists:
            metrics = {k: ev[k] for k in ("loss", "val_loss") if _finite(ev.get(k)) is not None}
            if job.loss is not None:
                metrics.setdefault("loss", job.loss)
            for name in ("token_accuracy", "val_token_accuracy"):
                value = _latest(session, job, name)
                if value is not None:
                    metrics[name] = value
            session.add(
                Checkpoint(
                    id=new_id("ckpt"),
                    job_id=job.id,
                    attempt=attempt.number,
                    step=step,
                    path=str(ev.get("path", "")),
                    metrics=metrics,
                )
            )
    data = {k: v for k, v in ev.items() if k not in ("type", "message")}
    message = ev.get("message") or kind
    session.add(
        Event(job_id=job.id, attempt=attempt.number, type=kind, message=str(message), data=data)
    )


def ingest(
    *, session: Session, attempt: Attempt, events: Iterable[tuple[int, dict[str, Any]]]
) -> AttemptState:
    """Store a batch of (sequence number, trainer event) pairs, skipping any already seen,
    and renew the lease."""
    job = session.get(Job, attempt.job_id)
    assert job is not None
    if attempt.status == AttemptStatus.RUNNING:
        # The lease first, on its own: storing a large batch (the replay after an outage)
        # may take longer than the node timeout.
        attempt.heartbeat_at = utcnow()
        session.commit()
        # Only rank 0 of a gang carries events; the other ranks' reports are heartbeats.
        for seq, event in sorted(events, key=lambda e: e[0]):
            if seq <= attempt.last_seq:
                continue
            _apply(session, job, attempt, event)
            attempt.last_seq = seq
        attempt.heartbeat_at = utcnow()
    session.commit()
    return _state(session, attempt)


def _last_event(session: Session, attempt: Attempt, kind: str) -> Event | None:
    return session.execute(
        select(Event)
        .where(Event.job_id == attempt.job_id, Event.attempt == attempt.number, Event.type == kind)
        .order_by(Event.id.desc())
        .limit(1)
    ).scalar()


def finish(
    *,
    session: Session,
    storage: Storage,
    attempt: Attempt,
    exit_code: int | None,
    log_tail: str | None,
    reason: str | None,
    preempted: bool,
    max_lost_attempts: int,
) -> AttemptState:
    """Settle one node's part of an attempt from its trainer's exit, and the job once the
    whole gang has stopped."""
    job = session.get(Job, attempt.job_id)
    assert job is not None
    if attempt.status not in ACTIVE_ATTEMPT:
        return _state(session, attempt)
    attempt.exit_code, attempt.log_tail = exit_code, log_tail
    attempt.finished_at = utcnow()
    results = None
    if job.cancel_requested:
        attempt.status = AttemptStatus.CANCELLED.value
    elif exit_code == EXIT_OK:
        attempt.status = AttemptStatus.SUCCEEDED.value
        if attempt.rank == 0:  # rank 0 exports the model
            model = _register_model(session, storage, job, attempt)
            job.model_id = model.id
            results = result_files.record(session, job)
            transition(
                session,
                job,
                JobStatus.SUCCEEDED,
                f"training finished; model {model.id}",
                model_id=model.id,
            )
    elif job.status in (JobStatus.PAUSED, JobStatus.PREEMPTED):
        attempt.status = AttemptStatus.PREEMPTED.value  # stopped on purpose; costs nothing
    elif gang.stop_requested(session, attempt):
        attempt.status = AttemptStatus.STOPPED.value  # its gang failed first
    elif (
        exit_code == EXIT_PREEMPTED
        or preempted
        # torchrun exits 1 when its ranks exit 75; the trainer's own event is what counts
        or _last_event(session, attempt, "preempted") is not None
    ):
        attempt.status = AttemptStatus.PREEMPTED.value
    else:
        attempt.status = AttemptStatus.FAILED.value
        if reason:
            attempt.log_tail = f"{reason}\n{log_tail or ''}"
    gang.settle(session, job, attempt.number, max_lost_attempts=max_lost_attempts)
    session.commit()
    result_files.write_after_commit(session, storage, results)
    return _state(session, attempt)


def _register_model(session: Session, storage: Storage, job: Job, attempt: Attempt) -> Model:
    export = storage.attempt_dir(job.id, attempt.number) / "export"
    if not (export / "config.json").exists():
        raise Conflict("no_model", "the trainer exited 0 without exporting a model")
    model_id = new_id("mdl")
    target = storage.model_dir(model_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    export.replace(target)
    config = json.loads((target / "config.json").read_text())
    files = [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(target.iterdir())]
    model = Model(
        id=model_id,
        project_id=job.project_id,
        job_id=job.id,
        name=job.name,
        arch=job.spec["model"]["arch"],
        config=config,
        files=files,
    )
    session.add(model)
    record(session, job, "model", f"model {model_id} exported", model_id=model_id)
    return model
