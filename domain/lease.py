"""Named leases in the database: the control loop runs where it holds the `control` lease."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.orm import Lease


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
