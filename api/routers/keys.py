"""`/v1/keys`: API keys of every project, for admin keys: list, create, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query

from api.deps import AdminDep, SessionDep, SettingsDep
from api.schemas import KeyCreated, KeyIn, KeyOut, Page
from domain import keys
from trainyard.specs import Name

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[AdminDep])
KeyId = Annotated[str, Path(max_length=64, pattern=r"^key_[0-9A-Za-z]+$")]


@router.get("", response_model=Page[KeyOut])
def list_keys(
    session: SessionDep, project: Annotated[Name | None, Query()] = None
) -> dict[str, object]:
    """Every key on the platform (or of one project, by name), oldest first; never a
    secret."""
    return {"data": keys.list_keys(session=session, project_name=project), "has_more": False}


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyIn, session: SessionDep) -> dict[str, object]:
    """Create a key for a project (created if new); the answer holds the key, shown once."""
    expires_in = (
        None if body.expires_in_seconds is None else timedelta(seconds=body.expires_in_seconds)
    )
    key, view = keys.create(
        session=session,
        project_name=body.project,
        role=keys.Role(body.role),
        expires_in=expires_in,
    )
    return {**view, "key": key}


@router.delete("/{key_id}", response_model=KeyOut)
def revoke_key(key_id: KeyId, session: SessionDep, settings: SettingsDep) -> dict[str, object]:
    """Revoke a key: it stops working at once in every API process; idempotent."""
    row = keys.revoke_key(session=session, key=key_id, data_dir=settings.data_dir)
    return keys.view(session=session, key=row)
