"""Request dependencies: the database session, the caller's project, the storage."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.guard import state_project
from domain.db import get_sessionmaker
from domain.orm import ApiKey
from trainyard.ids import hash_secret
from trainyard.settings import Settings, get_settings
from trainyard.storage import Storage

# Valid API keys are remembered per process (by key hash) for `key_cache_seconds`, so a
# status poll costs no key lookup. A revoked key therefore keeps working for at most that long
# in a process that saw it recently; unknown and revoked keys are never cached (0 turns the
# cache off).
KEY_CACHE_SIZE = 4096
_key_cache: OrderedDict[str, tuple[str, float]] = OrderedDict()


async def get_session() -> AsyncIterator[Session]:
    """A session per request, committed by the services that write."""
    # Opened and closed on the event loop: creating a session does no I/O, and closing it
    # (one rollback round trip to return the connection) costs less than two hops to a
    # worker thread. Sync handlers still use it from their worker thread in between.
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


def get_storage() -> Storage:
    """The storage layout under the configured root."""
    return Storage.from_settings(get_settings())


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header, or a 401."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <key> header")
    return authorization[7:].strip()


def _lookup_project(key_hash: str) -> str | None:
    """The project of a live key, from the database."""
    with get_sessionmaker()() as session:
        row = session.execute(
            select(ApiKey.project_id).where(
                ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
            )
        ).first()
    return None if row is None else str(row[0])


async def authenticate(authorization: str | None) -> tuple[str, str]:
    """The key's hash and the id of its project, or a 401."""
    key_hash = hash_secret(bearer(authorization))
    now = time.monotonic()
    hit = _key_cache.get(key_hash)
    if hit is not None and hit[1] > now:
        return key_hash, hit[0]
    project_id = await run_in_threadpool(_lookup_project, key_hash)
    if project_id is None:
        _key_cache.pop(key_hash, None)
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    ttl = get_settings().key_cache_seconds
    if ttl > 0:
        _key_cache[key_hash] = (project_id, now + ttl)
        _key_cache.move_to_end(key_hash)
        while len(_key_cache) > KEY_CACHE_SIZE:
            _key_cache.popitem(last=False)
    return key_hash, project_id


async def current_project(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The id of the project whose API key signed the request (checked by api.guard
    before the body was read)."""
    checked = state_project(request.scope)
    if checked is not None:
        return checked
    return (await authenticate(authorization))[1]


ProjectDep = Annotated[str, Depends(current_project)]

# A paging cursor is an id: letters, digits and underscores (never a NUL for the database).
CursorQuery = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_]+$")]
