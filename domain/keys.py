"""Projects and their API keys."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.errors import Invalid, NotFound
from domain.orm import ApiKey, Project
from trainyard.ids import hash_secret, new_api_key, new_id


def create_key(*, session: Session, project_name: str, admin: bool = False) -> str:
    """Create the project if needed and a new key for it; returns the key (shown once).
    An admin key also sees the cluster's nodes and sets quotas."""
    project = session.execute(select(Project).where(Project.name == project_name)).scalar()
    if project is None:
        project = Project(id=new_id("prj"), name=project_name)
        session.add(project)
        session.flush()
    key = new_api_key()
    session.add(
        ApiKey(
            id=new_id("key"),
            project_id=project.id,
            prefix=key[:10],
            key_hash=hash_secret(key),
            admin=admin,
        )
    )
    session.commit()
    return key


def is_admin(*, session: Session, key: str) -> bool:
    """Whether a live key is an admin key."""
    row = session.execute(
        select(ApiKey.admin).where(ApiKey.key_hash == hash_secret(key), ApiKey.revoked_at.is_(None))
    ).first()
    return bool(row and row[0])


# Every API process listens on this PostgreSQL channel (or watches REVOKED_FILE beside an
# embedded SQLite database) and forgets the keys it remembered when a key is revoked.
REVOKED_CHANNEL = "trainyard_keys_revoked"
REVOKED_FILE = "keys-revoked"


def revoke_key(*, session: Session, key: str, data_dir: Path) -> ApiKey:
    """Revoke a key, named by its id, its prefix or the key itself; the API processes are
    told on commit. Revoking it again changes nothing."""
    found = (
        session.execute(
            select(ApiKey).where(
                or_(ApiKey.id == key, ApiKey.prefix == key, ApiKey.key_hash == hash_secret(key))
            )
        )
        .scalars()
        .all()
    )
    if len(found) != 1:
        raise (
            NotFound("api key", key[:16])
            if not found
            else Invalid(
                "ambiguous_key", f"{len(found)} keys have the prefix {key!r}; give the key id"
            )
        )
    row = found[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        if session.get_bind().dialect.name == "postgresql":
            # Delivered by PostgreSQL when this transaction commits, never before.
            session.execute(select(func.pg_notify(REVOKED_CHANNEL, row.key_hash)))
        session.commit()
    marker = data_dir / REVOKED_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(row.key_hash)  # a new modification time, for embedded API processes
    return row
