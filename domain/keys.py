"""Projects and their API keys."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.orm import ApiKey, Project
from trainyard.ids import hash_secret, new_api_key, new_id


def create_key(*, session: Session, project_name: str) -> str:
    """Create the project if needed and a new key for it; returns the key (shown once)."""
    project = session.execute(select(Project).where(Project.name == project_name)).scalar()
    if project is None:
        project = Project(id=new_id("prj"), name=project_name)
        session.add(project)
        session.flush()
    key = new_api_key()
    session.add(
        ApiKey(id=new_id("key"), project_id=project.id, prefix=key[:10], key_hash=hash_secret(key))
    )
    session.commit()
    return key
