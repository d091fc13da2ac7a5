"""Engine and session factory, built from Settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

from trainyard.settings import get_settings


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout for SQLite, a pool otherwise."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine."""
    settings = get_settings()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """The process-wide session factory."""
    return sessionmaker(get_engine(), expire_on_commit=False)


def async_url(url: str) -> str:
    """The same database through an asyncio driver: asyncpg for PostgreSQL, aiosqlite for
    SQLite."""
    parsed = make_url(url)
    driver = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}.get(parsed.get_backend_name())
    if driver is None:
        raise ValueError(f"no asyncio driver for {parsed.get_backend_name()!r}")
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


@lru_cache
def get_async_engine() -> AsyncEngine:
    """The process-wide asyncio engine of the API's read paths (one per event loop's life:
    the API has one loop)."""
    url = async_url(get_settings().resolved_database_url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # Reads only: no pre-ping round trip; a connection the server dropped is discarded
    # on its error and the next request gets a fresh one. A request holds a connection for
    # its query alone, so a fixed 16 serve many more requests at once; more wait their turn
    # rather than open overflow connections, which are closed on return (a TLS attempt and
    # a server process for every one) and use up a shared server's max_connections.
    # Autocommit: a read is one statement, its own snapshot; without it every request
    # paid two more round trips, BEGIN before its query and ROLLBACK when returning the
    # connection.
    return create_async_engine(
        url, pool_size=16, max_overflow=0, pool_recycle=300, isolation_level="AUTOCOMMIT"
    )


@lru_cache
def get_async_sessionmaker() -> async_sessionmaker[AsyncSession]:
    """The process-wide asyncio session factory."""
    return async_sessionmaker(get_async_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
