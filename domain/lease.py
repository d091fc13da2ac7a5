"""Named leases in the database, on the database's clock.

- `control`: the control loop runs where it holds this lease. Each change of holder raises
  its epoch, and every tick first `fence`s itself: it locks the lease row for its
  transaction and checks that it still holds that epoch, so a stale leader that wakes up
  (after a pause, or with its lease taken over) cannot overwrite a newer leader's decisions.
- `api:<host>:<pid>`: each process that serves the node workers' endpoints renews one. While
  none is alive, no node can report, so silence proves nothing: the reconciler declares no
  node or attempt lost, and the first API process back renews every heartbeat before it
  counts as alive (`renew on return`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, select, text, update
from sqlalchemy.orm import Session

from domain.db import get_sessionmaker, utcnow
from domain.lifecycle import ACTIVE_ATTEMPT
from domain.orm import Attempt, Lease, Node

API_PREFIX = "api:"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leadership:
    """A lease held: by whom, and in which epoch (the term of this holder)."""

    name: str
    holder: str
    epoch: int
    ttl: float


def db_now(session: Session) -> datetime:
    """The database's clock, so hosts whose clocks drift agree on when a lease expires
    (SQLite is embedded on one host: its clock is this host's)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.execute(select(func.now())).scalar_one()
        assert isinstance(now, datetime)
        return now
    return utcnow()


def hold_lease(session: Session, name: str, holder: str, ttl: float) -> Leadership | None:
    """Take or renew a named lease: the leadership while this holder has it, else None."""
    now = db_now(session)
    expires = now + timedelta(seconds=ttl)
    epoch = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
        .values(
            holder=holder,
            expires_at=expires,
            epoch=case((Lease.holder == holder, Lease.epoch), else_=Lease.epoch + 1),
        )
        .returning(Lease.epoch)
    ).scalar()
    if epoch is None and session.get(Lease, name) is None:
        session.add(Lease(name=name, holder=holder, expires_at=expires, epoch=1))
        try:
            session.commit()
            return Leadership(name, holder, 1, ttl)
        except Exception:  # another process inserted it first
            session.rollback()
            return None
    session.commit()
    return None if epoch is None else Leadership(name, holder, int(epoch), ttl)


def fence(session: Session, leadership: Leadership) -> bool:
    """Open the caller's transaction as the leader: lock the lease row until the commit
    and check it is still ours, in our epoch, unexpired. False means write nothing.

    On PostgreSQL the transaction also gets an idle timeout of the lease's length: a leader
    that stalls mid-tick (paused, swapped out) is cut off by the server, its transaction
    rolled back and the row unlocked, so the next leader is never blocked for longer."""
    if session.get_bind().dialect.name == "postgresql":
        ms = max(1000, int(leadership.ttl * 1000))
        session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {ms}"))
    row = session.execute(
        select(Lease.epoch)
        .where(
            Lease.name == leadership.name,
            Lease.holder == leadership.holder,
            Lease.epoch == leadership.epoch,
            Lease.expires_at > db_now(session),
        )
        .with_for_update()
    ).first()
    return row is not None


def api_alive(session: Session) -> bool:
    """Whether some process serving the node workers' endpoints is alive."""
    return (
        session.execute(
            select(Lease.name).where(
                Lease.name.startswith(API_PREFIX), Lease.expires_at > db_now(session)
            )
        ).first()
        is not None
    )


def keep_api_alive(session: Session, holder: str, ttl: float) -> None:
    """Renew this API process's liveness lease. The first one back after an outage first
    renews every active attempt's and online node's heartbeat: their silence was ours."""
    now = db_now(session)
    name = API_PREFIX + holder
    if not api_alive(session):
        session.execute(
            update(Attempt).where(Attempt.status.in_(ACTIVE_ATTEMPT)).values(heartbeat_at=now)
        )
        session.execute(update(Node).where(Node.status == "online").values(heartbeat_at=now))
        # Leases of API processes long gone.
        session.execute(
            delete(Lease).where(
                Lease.name.startswith(API_PREFIX), Lease.expires_at < now - timedelta(hours=1)
            )
        )
    expires = now + timedelta(seconds=ttl)
    renewed = session.execute(
        update(Lease).where(Lease.name == name).values(expires_at=expires)
    ).rowcount  # type: ignore[attr-defined]
    if not renewed:
        session.add(Lease(name=name, holder=holder, expires_at=expires))
    session.commit()


def release(session: Session, name: str, holder: str) -> None:
    """Give up a lease this holder has (a clean shutdown)."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
    session.commit()


def serve_api_presence(node_timeout: float, stop: threading.Event) -> None:
    """While the node workers' endpoints are served here, keep this process's liveness
    lease; its length is a third of the node timeout, so the reconciler knows the API is
    gone before any heartbeat it missed could count against a node."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    ttl = node_timeout / 3
    factory = get_sessionmaker()
    while not stop.is_set():
        try:
            with factory() as session:
                keep_api_alive(session, holder, ttl)
        except Exception:
            log.exception("renewing the API's liveness lease failed")
        stop.wait(ttl / 3)
    try:
        with factory() as session:
            release(session, API_PREFIX + holder, holder)
    except Exception:
        log.exception("releasing the API's liveness lease failed")
