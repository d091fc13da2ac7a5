"""Node workers: registration, heartbeats, and the cluster as an admin sees it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.errors import NotFound
from domain.lifecycle import ACTIVE_ATTEMPT
from domain.orm import Attempt, Job, Node
from trainyard.ids import new_id


def register(
    *,
    session: Session,
    name: str,
    host: str,
    queue: str,
    pool: str,
    accelerator: str,
    slots: int,
    devices: list[str],
    memory_bytes: int | None,
    address: str | None = None,
) -> Node:
    """Create or refresh a node by its name; it is online from now on."""
    node = session.execute(select(Node).where(Node.name == name)).scalar()
    if node is None:
        node = Node(id=new_id("node"), name=name)
        session.add(node)
    node.host, node.queue, node.pool = host, queue, pool
    node.accelerator, node.slots, node.devices = accelerator, slots, devices
    node.memory_bytes, node.address = memory_bytes, address or host
    node.status, node.heartbeat_at = "online", utcnow()
    session.commit()
    return node


def heartbeat(*, session: Session, node_id: str) -> Node:
    """Renew a node's lease."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound("node", node_id)
    node.status, node.heartbeat_at = "online", utcnow()
    session.commit()
    return node


def leave(*, session: Session, node_id: str) -> Node:
    """A node shutting down: place nothing more on it (its heartbeat brings it back)."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound("node", node_id)
    node.status = "offline"
    session.commit()
    return node


@dataclass(frozen=True)
class RunningAttempt:
    """One node's part of a running job attempt."""

    job_id: str
    project_id: str
    attempt: int
    rank: int
    nodes: int
    slots: int
    status: str


@dataclass(frozen=True)
class NodeView:
    """A node with what runs on it now."""

    node: Node
    free_slots: int
    attempts: list[RunningAttempt]


def overview(*, session: Session) -> list[NodeView]:
    """Every registered node, by name, with its free slots and running attempts."""
    rows = session.execute(
        select(Attempt, Job.project_id)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.status.in_(ACTIVE_ATTEMPT))
        .order_by(Attempt.created_at)
    ).all()
    running: dict[str, list[RunningAttempt]] = {}
    for attempt, project_id in rows:
        running.setdefault(attempt.node_id, []).append(
            RunningAttempt(
                job_id=attempt.job_id,
                project_id=project_id,
                attempt=attempt.number,
                rank=attempt.rank,
                nodes=attempt.nodes,
                slots=attempt.slots,
                status=attempt.status,
            )
        )
    views = []
    for node in session.execute(select(Node).order_by(Node.name)).scalars():
        mine = running.get(node.id, [])
        free = node.slots - sum(a.slots for a in mine) if node.status == "online" else 0
        views.append(NodeView(node=node, free_slots=max(0, free), attempts=mine))
    return views
