"""Alembic owns the schema: it goes up, down and up again, matches the ORM, and the API
never creates a table itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from api.app import create_app
from domain import migrate
from domain.db import get_async_engine, get_async_sessionmaker, get_engine, get_sessionmaker
from domain.orm import Base
from tests.stack import Database
from trainyard.messaging import get_app
from trainyard.settings import get_settings

pytestmark = pytest.mark.integration

TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with nothing in it: a fresh PostgreSQL database or SQLite file."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'trainyard.db'}"
        return
    db = Database()
    try:
        yield db.url
    finally:
        db.close()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def schema_differences(url: str) -> list[object]:
    """What autogenerate would add, drop or alter to make the database match the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert TABLES and tables(empty_url) == set()

    migrate.upgrade(empty_url)
    assert tables(empty_url) == TABLES | {"alembic_version"}
    assert revision(empty_url) == head

    migrate.upgrade(empty_url)  # a second upgrade is a no-op
    assert revision(empty_url) == head

    migrate.downgrade(empty_url, "base")
    assert tables(empty_url) == {"alembic_version"}
    assert revision(empty_url) is None

    migrate.upgrade(empty_url)
    assert tables(empty_url) == TABLES | {"alembic_version"}
    assert revision(empty_url) == head


def test_migrated_schema_matches_the_models(empty_url: str) -> None:
    # Types are compared too; UTCDateTime and the sqlite variant of the event/metric ids
    # reflect back as what they are stored as, so no diff is expected on either backend.
    migrate.upgrade(empty_url)
    assert schema_differences(empty_url) == []


@pytest.fixture
def app_env(empty_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """TRAINYARD_* pointing at the empty database and temporary folders."""
    for name in list(os.environ):
        if name.startswith("TRAINYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", empty_url)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRAINYARD_STORAGE_ROOT", str(tmp_path / "storage"))

    def clear() -> None:
        if get_engine.cache_info().currsize:
            get_engine().dispose()
        for cached in (
            get_settings,
            get_engine,
            get_sessionmaker,
            get_async_engine,
            get_async_sessionmaker,
            get_app,
        ):
            cached.cache_clear()

    clear()
    try:
        yield empty_url
    finally:
        clear()


def test_the_api_never_creates_tables(app_env: str) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        client.get("/readyz")
        response = client.get("/v1/jobs", headers={"Authorization": "Bearer ty_whatever"})
        assert response.status_code == 500  # no schema: an error, not a silent create_all
        assert response.json()["error"]["code"] == "internal_error"
    assert tables(app_env) == set()
