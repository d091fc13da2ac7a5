"""Projects and their API keys."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.errors import Invalid, NotFound
from domain.orm import ApiKey, Project
from trainyard.ids import hash_secret, new_api_key, new_id


class Role(StrEnum):
    """What a key may see: a member its project; an admin also the platform's nodes,
    queue and quotas, and other keys."""

    MEMBER = "member"
    ADMIN = "admin"


def live(now: datetime | None = None) -> ColumnElement[bool]:
    """The condition a key must meet to work: not revoked, not expired."""
    now = now or utcnow()
    return and_(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    )


def create_key(
    *,
    session: Session,
    project_name: str,
    admin: bool = False,
    expires_in: timedelta | None = None,
) -> str:
    """Create the project if needed and a new key for it; returns the key (shown once).
    An admin key also sees the cluster's nodes and sets quotas; a key with `expires_in`
    stops working after that long."""
    return create(
        session=session,
        project_name=project_name,
        role=Role.ADMIN if admin else Role.MEMBER,
        expires_in=expires_in,
    )[0]


def create(
    *, session: Session, project_name: str, role: Role, expires_in: timedelta | None
) -> tuple[str, dict[str, Any]]:
    """create_key(), answering the key (shown once) and its listing."""
    if expires_in is not None and expires_in <= timedelta(0):
        raise Invalid("invalid_expiry", f"expires_in must be positive, got {expires_in}")
    project = session.execute(select(Project).where(Project.name == project_name)).scalar()
    if project is None:
        project = Project(id=new_id("prj"), name=project_name)
        session.add(project)
        session.flush()
    key = new_api_key()
    row = ApiKey(
        id=new_id("key"),
        project_id=project.id,
        prefix=key[:10],
        key_hash=hash_secret(key),
        admin=role == Role.ADMIN,
        expires_at=None if expires_in is None else utcnow() + expires_in,
    )
    session.add(row)
    session.commit()
    return key, _view(row, project.name)


def is_admin(*, session: Session, key: str) -> bool:
    """Whether a live key is an admin key."""
    row = session.execute(
        select(ApiKey.admin).where(ApiKey.key_hash == hash_secret(key), live())
    ).first()
    return bool(row and row[0])


def list_keys(*, session: Session, project_name: str | None = None) -> list[dict[str, Any]]:
    """Every key (of one project, if named), oldest first: never the secret, only its
    prefix, with role, creation, expiry and revocation."""
    query = select(ApiKey, Project.name).join(Project, Project.id == ApiKey.project_id)
    if project_name is not None:
        query = query.where(Project.name == project_name)
    rows = session.execute(query.order_by(ApiKey.created_at, ApiKey.id))
    return [_view(key, name) for key, name in rows]


def _view(key: ApiKey, project_name: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "project_id": key.project_id,
        "project": project_name,
        "role": (Role.ADMIN if key.admin else Role.MEMBER).value,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


def view(*, session: Session, key: ApiKey) -> dict[str, Any]:
    """One key as list_keys() shows it."""
    project = session.get(Project, key.project_id)
    return _view(key, project.name if project else "")


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
