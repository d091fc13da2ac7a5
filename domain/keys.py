"""Projects and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

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
