"""Settings that guard secrets: placeholders refused, the embedded node secret private."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainyard.settings import Settings


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("node_secret", "change-me", "TRAINYARD_NODE_SECRET"),
        ("node_secret", "change-me-node-secret", "TRAINYARD_NODE_SECRET"),
        (
            "database_url",
            "postgresql+psycopg://trainyard:change-me@postgres:5432/trainyard",
            "TRAINYARD_DATABASE_URL",
        ),
        ("broker_url", "redis://:change-me-redis@redis:6379/0", "TRAINYARD_BROKER_URL"),
    ],
)
def test_a_placeholder_secret_is_named(field: str, value: str, named: str) -> None:
    assert Settings(**{field: value}).placeholder_secrets() == [named]


def test_real_secrets_and_embedded_urls_pass() -> None:
    settings = Settings(
        node_secret="f3a9c1d2e4b5",
        database_url="postgresql+psycopg://trainyard:9b1e5c@postgres:5432/trainyard",
        broker_url="redis://:77aa01@redis:6379/0",
    )
    assert settings.placeholder_secrets() == []
    assert Settings(database_url="sqlite:///x.db", broker_url=None).placeholder_secrets() == []


def test_the_embedded_node_secret_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", node_secret=None)
    secret = settings.resolved_node_secret
    path = tmp_path / "data" / "node-secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(secret) >= 32 and settings.resolved_node_secret == secret
