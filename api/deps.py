"""Request dependencies: the database session, the caller's project, the storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import get_sessionmaker
from api.errors import ApiError
from api.models import ApiKey
from trainyard.ids import hash_secret
from trainyard.settings import Settings, get_settings
from trainyard.storage import Storage


def get_session() -> Iterator[Session]:
    """A session per request, committed by the services that write."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


def get_storage() -> Storage:
    """The storage layout under the configured root."""
    return Storage(get_settings().resolved_storage_root)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header, or a 401."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <key> header")
    return authorization[7:].strip()


def current_project(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The id of the project whose API key signed the request."""
    key_hash = hash_secret(bearer(authorization))
    row = session.execute(
        select(ApiKey.project_id).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    return row[0]


ProjectDep = Annotated[str, Depends(current_project)]
