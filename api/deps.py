"""Request dependencies: the database session, the caller's project, the storage."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.guard import state_project
from api.wakeups import listen
from domain.db import get_async_engine, get_async_sessionmaker, get_sessionmaker, utcnow
from domain.keys import REVOKED_CHANNEL, REVOKED_FILE, live
from domain.orm import ApiKey
from trainyard.ids import hash_secret
from trainyard.settings import Settings, get_settings
from trainyard.storage import Storage

log = logging.getLogger(__name__)

KEY_CACHE_SIZE = 4096


class KeyCache:
    """Valid API keys by hash, remembered by this process so a status poll costs no key
    lookup; forgotten at once when any key is revoked.

    On PostgreSQL a connection of its own LISTENs on domain.keys.REVOKED_CHANNEL (the
    revoking transaction NOTIFYs on commit); until it is listening, and after it drops, the
    cache is not used and every request reads its key. Beside an embedded SQLite database
    (one host) the revocation marker file's time is compared on each request (one stat).
    """

    def __init__(self) -> None:
        self.keys: OrderedDict[str, tuple[str, datetime | None]] = OrderedDict()
        self.trusted = False
        self.marker: Path | None = None
        self.marker_time = 0
        self.listener: Any = None
        self._starting: asyncio.Task[None] | None = None

    def get(self, key_hash: str) -> str | None:
        """The key's project if remembered and no revocation may have passed unseen."""
        if self.marker is not None:
            try:
                seen = self.marker.stat().st_mtime_ns
            except FileNotFoundError:
                seen = 0
            if seen != self.marker_time:
                self.keys.clear()
                self.marker_time = seen
        elif not self.trusted:
            self._listen()
            return None
        entry = self.keys.get(key_hash)
        if entry is None:
            return None
        project_id, expires_at = entry
        if expires_at is not None and expires_at <= utcnow():
            del self.keys[key_hash]
            return None
        self.keys.move_to_end(key_hash)
        return project_id

    def put(self, key_hash: str, project_id: str, expires_at: datetime | None = None) -> None:
        """Remember a key just read from the database (until it expires, if it does)."""
        if self.marker is None and not self.trusted:
            return
        self.keys[key_hash] = (project_id, expires_at)
        while len(self.keys) > KEY_CACHE_SIZE:
            self.keys.popitem(last=False)

    def forget(self, key_hash: str | None = None) -> None:
        """Forget one key (or all)."""
        if key_hash is None:
            self.keys.clear()
        else:
            self.keys.pop(key_hash, None)

    def configure(self, settings: Settings) -> None:
        """Pick how revocations are seen, from the database URL."""
        self.keys.clear()
        self.marker = None
        if settings.resolved_database_url.startswith("sqlite"):
            self.marker = settings.data_dir / REVOKED_FILE
            self.marker_time = -1  # read on first use

    def _listen(self) -> None:
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        conn = await listen(
            REVOKED_CHANNEL,
            self._on_revoked,
            self._on_lost,
            "key revocations",
            "checking every key",
        )
        if conn is None:
            return
        self.listener = conn
        self.keys.clear()  # anything revoked before now was not heard
        self.trusted = True

    def _on_revoked(self, _conn: Any, _pid: int, _channel: str, key_hash: str) -> None:
        self.forget(key_hash)

    def _on_lost(self, _conn: Any) -> None:
        self.trusted = False
        self.listener = None
        self.keys.clear()

    async def close(self) -> None:
        """Stop listening (at shutdown)."""
        if self.listener is not None:
            await self.listener.close()
        self.trusted, self.listener = False, None


key_cache = KeyCache()


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


async def get_async_session() -> AsyncIterator[AsyncSession]:
    """An asyncio session per request, for the read paths (no thread hop)."""
    async with get_async_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(get_async_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer` header, or a 401."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <key> header")
    return authorization[7:].strip()


async def _lookup_project(key_hash: str) -> tuple[str, datetime | None] | None:
    """The project of a live key and when the key expires, from the database."""
    async with get_async_engine().connect() as conn:
        row = (
            await conn.execute(
                select(ApiKey.project_id, ApiKey.expires_at).where(
                    ApiKey.key_hash == key_hash, live()
                )
            )
        ).first()
    return None if row is None else (str(row[0]), row[1])


async def authenticate(authorization: str | None) -> tuple[str, str]:
    """The key's hash and the id of its project, or a 401."""
    key_hash = hash_secret(bearer(authorization))
    project_id = key_cache.get(key_hash)
    if project_id is not None:
        return key_hash, project_id
    found = await _lookup_project(key_hash)
    if found is None:
        raise ApiError(401, "unauthorized", "invalid, expired or revoked API key")
    key_cache.put(key_hash, *found)
    return key_hash, found[0]


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


async def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse (403) a key that is not an admin key; 401 without a valid key."""
    key_hash, _ = await authenticate(authorization)  # a cache hit on routes the guard checked
    async with get_async_engine().connect() as conn:
        admin = (
            await conn.execute(select(ApiKey.admin).where(ApiKey.key_hash == key_hash, live()))
        ).scalar()
    if not admin:
        raise ApiError(
            403, "forbidden", "this needs an admin key (trainyard keys create --role admin)"
        )


AdminDep = Depends(require_admin)
# A paging cursor is an id: letters, digits and underscores (never a NUL for the database).
# An id to page after: letters, digits, "_" and "-" (OpenAI-style ids), nothing that a
# database could choke on (a NUL reaching PostgreSQL is a server error).
CursorQuery = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
