"""Node workers: registration and heartbeats."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import utcnow
from api.errors import not_found
from api.models import Node
from api.schemas import NodeRegisterIn
from trainyard.ids import new_id


def register(*, session: Session, node_in: NodeRegisterIn) -> Node:
    """Create or refresh a node by its name; it is online from now on."""
    node = session.execute(select(Node).where(Node.name == node_in.name)).scalar()
    if node is None:
        node = Node(id=new_id("node"), name=node_in.name)
        session.add(node)
    node.host, node.queue, node.pool = node_in.host, node_in.queue, node_in.pool
    node.accelerator, node.slots, node.devices = node_in.accelerator, node_in.slots, node_in.devices
    node.memory_bytes = node_in.memory_bytes
    node.status, node.heartbeat_at = "online", utcnow()
    session.commit()
    return node


def heartbeat(*, session: Session, node_id: str) -> Node:
    """Renew a node's lease."""
    node = session.get(Node, node_id)
    if node is None:
        raise not_found("node", node_id)
    node.status, node.heartbeat_at = "online", utcnow()
    session.commit()
    return node
