"""Node workers: registration and heartbeats."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.errors import NotFound
from domain.orm import Node
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
) -> Node:
    """Create or refresh a node by its name; it is online from now on."""
    node = session.execute(select(Node).where(Node.name == name)).scalar()
    if node is None:
        node = Node(id=new_id("node"), name=name)
        session.add(node)
    node.host, node.queue, node.pool = host, queue, pool
    node.accelerator, node.slots, node.devices = accelerator, slots, devices
    node.memory_bytes = memory_bytes
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
