"""Shared fixtures: a real deployment on PostgreSQL and Redis, and sample corpora."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from tests.stack import Database, Stack, free_port

if TYPE_CHECKING:
    from trainyard.client import Client

UPLOAD_CAP = 4 * 1024 * 1024
MAX_LINE = 256 * 1024
WORDS = [
    "the",
    "a",
    "king",
    "queen",
    "ship",
    "river",
    "north",
    "wind",
    "sails",
    "over",
    "under",
    "bright",
    "dark",
    "old",
    "young",
    "castle",
    "walls",
    "sing",
    "songs",
    "of",
    "winter",
    "and",
    "summer",
    "light",
    "falls",
    "on",
    "quiet",
    "fields",
]


def corpus(lines: int = 2000, seed: int = 0) -> str:
    """A small English-like corpus with enough structure for a model to learn."""
    rng = random.Random(seed)
    return (
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(lines)
        )
        + "\n"
    )


SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + ["th", "sh", "str"]


def pseudo_corpus(path: Path, megabytes: float, seed: int) -> str:
    """Text of many made-up words, so training and applying a BPE tokenizer take a while."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(20000)]
    lines: list[str] = []
    size = 0
    while size < megabytes * 1e6:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) + "\n"
        lines.append(line)
        size += len(line)
    content = "".join(lines)
    path.write_text(content)
    return content


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[Database]:
    """A fresh database on the test PostgreSQL server."""
    db = Database()
    yield db
    db.close()


@pytest.fixture(scope="module")
def migrated_url() -> Iterator[str]:
    """A throwaway database at the latest schema, for one test module."""
    from domain import migrate

    db = Database()
    try:
        migrate.upgrade(db.url)
        yield db.url
    finally:
        db.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: Database) -> Iterator[Stack]:
    """The whole platform: uvicorn, control loop, Celery prep and node workers, Redis."""
    workdir = tmp_path_factory.mktemp("stack")
    env = {
        "TRAINYARD_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
        "TRAINYARD_MAX_LINE_BYTES": str(MAX_LINE),
        # Node workers report on a listener of their own, as in production.
        "TRAINYARD_INTERNAL_PORT": str(free_port()),
        # Webhook tests receive on 127.0.0.1 and see a retry within a second.
        "TRAINYARD_WEBHOOK_ALLOW_PRIVATE": "true",
        "TRAINYARD_WEBHOOK_RETRY_BASE_SECONDS": "0.3",
    }
    with Stack(workdir, postgres_db.url, extra_env=env) as s:
        s.up()
        yield s


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text corpus on disk."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(corpus())
    return path


@contextlib.contextmanager
def stack_database(stack: Stack) -> Iterator[Engine]:
    """An engine on a stack's own database, disposed of at the end."""
    engine = create_engine(stack.env["TRAINYARD_DATABASE_URL"])
    try:
        yield engine
    finally:
        engine.dispose()


def ready_dataset(client: Client, folder: Path, lines: int = 1500) -> str:
    """Upload a generated corpus and wait for its validation; the ready dataset's id."""
    path = folder / "corpus.txt"
    path.write_text(corpus(lines=lines))
    ds = client.wait_dataset(str(client.upload_dataset(path)["id"]), timeout=120)
    assert ds["status"] == "ready"
    return str(ds["id"])
