"""A prep task that runs past its time limit, or is delivered too often, ends with its
dataset `invalid` and the reason: a real Celery prep worker with a 2 s limit, on the
session stack's database and storage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.stack import Database, Stack
from trainyard.client import Client
from trainyard.messaging import VALIDATE_DATASET, build_app
from trainyard.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slow_prep(
    stack: Stack, postgres_db: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A prep worker alone, with its own queue, a 2 s time limit and 3 deliveries."""
    extra = {
        "TRAINYARD_STORAGE_ROOT": stack.env["TRAINYARD_STORAGE_ROOT"],
        "TRAINYARD_PREP_TIMEOUT_SECONDS": "2",
        "TRAINYARD_PREP_MAX_DELIVERIES": "3",
    }
    with Stack(tmp_path_factory.mktemp("slow-prep"), postgres_db.url, extra_env=extra) as s:
        s.start("prep", "worker", "prep", "--loglevel", "INFO")
        yield s


@pytest.fixture(scope="module")
def db(postgres_db: Database) -> Iterator[Engine]:
    engine = create_engine(postgres_db.url)
    yield engine
    engine.dispose()


def revalidate(
    slow_prep: Stack, db: Engine, dataset_id: str, source: bytes, deliveries: int
) -> dict[str, Any]:
    """Put a dataset back to `validating` with this source and delivery count, send its
    task to the slow prep worker, and wait for the verdict."""
    path = Path(slow_prep.env["TRAINYARD_STORAGE_ROOT"]) / "datasets" / dataset_id / "source"
    path.write_bytes(source)
    with db.begin() as conn:
        conn.execute(
            text(
                "UPDATE datasets SET status = 'validating', errors = '[]', "
                "prep_deliveries = :n WHERE id = :id"
            ),
            {"n": deliveries, "id": dataset_id},
        )
    broker = Settings(broker_url=slow_prep.env["TRAINYARD_BROKER_URL"])
    build_app(broker).send_task(
        VALIDATE_DATASET,
        args=[{"dataset_id": dataset_id}],
        queue=slow_prep.env["TRAINYARD_QUEUE_PREFIX"] + "prep",
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with db.connect() as conn:
            row = conn.execute(
                text("SELECT status, errors, prep_deliveries FROM datasets WHERE id = :id"),
                {"id": dataset_id},
            ).one()
        if row.status != "validating":
            return dict(row._mapping)
        time.sleep(0.3)
    raise TimeoutError(slow_prep.log("prep")[-3000:])


@pytest.fixture(scope="module")
def dataset_id(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    client = Client(stack.url, stack.new_key("prep-limits"))
    path = tmp_path_factory.mktemp("prep-limits") / "small.txt"
    path.write_text("a line of text\n" * 20)
    return str(client.wait_dataset(str(client.upload_dataset(path)["id"]))["id"])


def test_validation_past_its_time_limit_makes_the_dataset_invalid(
    slow_prep: Stack, db: Engine, dataset_id: str
) -> None:
    # 20 million short lines: seconds of checking, well past the 1.8 s soft limit.
    verdict = revalidate(slow_prep, db, dataset_id, b"ab\n" * 20_000_000, deliveries=0)
    assert verdict["status"] == "invalid"
    assert "longer than its limit of 1.8 s" in verdict["errors"][0]["message"]


def test_a_task_delivered_past_the_cap_gives_up_with_the_reason(
    slow_prep: Stack, db: Engine, dataset_id: str
) -> None:
    # Three deliveries already died: the fourth marks it invalid without running it.
    verdict = revalidate(slow_prep, db, dataset_id, b"a valid line\n", deliveries=3)
    assert verdict["status"] == "invalid"
    assert verdict["prep_deliveries"] == 4
    assert "stopped 3 times" in verdict["errors"][0]["message"]
    # Under the cap, the same task runs and the dataset is ready.
    assert revalidate(slow_prep, db, dataset_id, b"a valid line\n", deliveries=1)["status"] == (
        "ready"
    )
