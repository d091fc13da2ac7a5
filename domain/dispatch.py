"""Dispatch: place prepared jobs on nodes with free slots and mint their attempts."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.lifecycle import ACTIVE_ATTEMPT, AttemptStatus, JobStatus, fail, record
from domain.orm import Attempt, Job, Node
from domain.run_config import run_config
from trainyard.ids import hash_secret, new_id
from trainyard.messaging import RUN_ATTEMPT, Message
from trainyard.settings import Settings
from trainyard.storage import Storage


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


def dispatch(session: Session, storage: Storage, settings: Settings, out: list[Message]) -> None:
    """Give each prepared job without a live attempt a new attempt on a node that fits,
    writing its run.json; the run messages go to `out`, to be sent after the commit."""
    free = _free_slots(session)
    waiting = (
        session.execute(
            select(Job)
            .where(Job.status.in_((JobStatus.QUEUED, JobStatus.PREPARING)), Job.prepared.is_(True))
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
        folder = Path(config.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.json").write_text(json.dumps(config.to_dict(), indent=2))
        token = secrets.token_urlsafe(32)
        slots = job.spec["resources"]["processes_per_node"]
        attempt = Attempt(
            id=new_id("att"),
            job_id=job.id,
            number=number,
            node_id=node.id,
            slots=slots,
            status=AttemptStatus.STARTING.value,
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
