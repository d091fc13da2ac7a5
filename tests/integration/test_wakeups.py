"""Wake-ups on a real PostgreSQL database: the migration's triggers notify the control loop,
the webhook loop and the event streams of what they act on, and stay silent on a running
job's progress and heartbeats; the live stack's stream and control loop wake at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from domain import wake
from tests.conftest import ready_dataset
from tests.stack import Database, Stack
from trainyard.client import Client

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = create_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES ('p1', 'p1', :now)"),
            {"now": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO datasets (id, project_id, name, format, kind, status, bytes, sha256,"
                " errors, created_at, updated_at) VALUES ('d1', 'p1', 'd', 'text', 'text',"
                " 'ready', 1, 'x', '[]', :now, :now)"
            ),
            {"now": NOW},
        )
    yield engine
    engine.dispose()


def run(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), {"now": NOW, **params})


def add_job(engine: Engine, job_id: str, status: str) -> None:
    run(
        engine,
        "INSERT INTO jobs (id, project_id, type, status, spec, dataset_id, prepared, attempt,"
        " cancel_requested, step, tokens, created_at, updated_at) VALUES (:id, 'p1', 'pretrain',"
        " :status, '{}', 'd1', false, 0, false, 0, 0, :now, :now)",
        id=job_id,
        status=status,
    )


def test_control_hears_new_jobs_and_status_changes_not_progress(
    migrated_url: str, engine: Engine
) -> None:
    control = wake.Waiter(migrated_url, wake.CONTROL)
    assert control.listening
    try:
        add_job(engine, "j1", "queued")
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        # A running job's progress, and why it waits, wake no one.
        run(engine, "UPDATE jobs SET step = 10, loss = 2.5, waiting_reason = 'w' WHERE id = 'j1'")
        assert control.wait(0.5, 0.5, threading.Event()) == set()
        run(engine, "UPDATE jobs SET status = 'running' WHERE id = 'j1'")
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        run(engine, "UPDATE jobs SET cancel_requested = true WHERE id = 'j1'")
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        # Rows with json columns: a dataset's change.
        run(engine, "UPDATE datasets SET prep_deliveries = 1 WHERE id = 'd1'")
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        # Rolled back: nothing to hear.
        with engine.connect() as conn:
            conn.execute(text("UPDATE jobs SET priority = 3 WHERE id = 'j1'"))
            conn.rollback()
        assert control.wait(0.5, 0.5, threading.Event()) == set()
    finally:
        control.close()


def test_control_hears_nodes_come_and_go_not_their_heartbeats(
    migrated_url: str, engine: Engine
) -> None:
    control = wake.Waiter(migrated_url, wake.CONTROL)
    assert control.listening
    try:
        run(
            engine,
            "INSERT INTO nodes (id, name, host, queue, pool, accelerator, slots, devices, status,"
            " heartbeat_at, registered_at) VALUES ('n1', 'n1', 'h', 'q', 'default', 'cpu', 2,"
            " '[]', 'online', :now, :now)",
        )
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        run(engine, "UPDATE nodes SET heartbeat_at = now() WHERE id = 'n1'")
        assert control.wait(0.5, 0.5, threading.Event()) == set()
        run(engine, "UPDATE nodes SET status = 'offline' WHERE id = 'n1'")
        assert control.wait(1.0, 1.0, threading.Event()) == {""}
        # A statement that touches no row wakes no one (the sweep runs this every time).
        run(
            engine,
            "UPDATE nodes SET status = 'offline' WHERE heartbeat_at < :now - interval '1 day'",
        )
        assert control.wait(0.5, 0.5, threading.Event()) == set()
    finally:
        control.close()


def test_streams_hear_their_job_by_id_and_webhooks_their_outbox(
    migrated_url: str, engine: Engine
) -> None:
    events = wake.Waiter(migrated_url, wake.EVENTS)
    hooks = wake.Waiter(migrated_url, wake.WEBHOOKS)
    assert events.listening and hooks.listening
    try:
        add_job(engine, "j2", "running")
        run(engine, "UPDATE jobs SET step = 5, tokens = 100 WHERE id = 'j2'")
        assert events.wait(1.0, 1.0, threading.Event()) == {"j2"}
        run(engine, "UPDATE jobs SET tokens_per_s = 7 WHERE id = 'j2'")
        assert events.wait(0.5, 0.5, threading.Event()) == set()
        # Many events in one transaction: one wake, the job's id.
        with engine.begin() as conn:
            for i in range(20):
                conn.execute(
                    text(
                        "INSERT INTO events (job_id, type, message, data, created_at)"
                        " VALUES ('j2', 'log', :m, '{}', :now)"
                    ),
                    {"m": str(i), "now": NOW},
                )
        assert events.wait(1.0, 1.0, threading.Event()) == {"j2"}
        assert events.wait(0.3, 0.3, threading.Event()) == set()
        assert hooks.wait(0.3, 0.3, threading.Event()) == set()
        run(
            engine,
            "INSERT INTO webhooks (id, project_id, url, event_types, secret, created_at) VALUES"
            " ('w1', 'p1', 'https://example.com/h', '[]', 's', :now)",
        )
        run(
            engine,
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, subject_id, payload,"
            " status, tries, next_try_at, created_at) VALUES ('wd1', 'w1', 'job.succeeded',"
            " 'j2', '{}', 'pending', 0, :now, :now)",
        )
        assert hooks.wait(1.0, 1.0, threading.Event()) == {""}
    finally:
        events.close()
        hooks.close()


def test_a_waiter_beside_sqlite_polls() -> None:
    waiter = wake.Waiter("sqlite:///nowhere.db", wake.CONTROL)
    assert not waiter.listening
    t0 = time.monotonic()
    assert waiter.wait(5.0, 0.2, threading.Event()) == set()
    assert 0.15 < time.monotonic() - t0 < 2.0


def test_a_stop_request_ends_a_wait(migrated_url: str) -> None:
    waiter = wake.Waiter(migrated_url, wake.CONTROL)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    try:
        assert waiter.wait(30.0, 30.0, stop) == set()
    finally:
        waiter.close()
    assert time.monotonic() - t0 < 5.0


def test_a_stream_wakes_for_its_own_job_only(
    migrated_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's hub: a stream following j3 wakes when j3's event commits, not for j4's;
    and until the hub listens, a stream polls."""
    from api.wakeups import JobWakeups
    from trainyard.settings import Settings, get_settings

    monkeypatch.setenv("TRAINYARD_DATABASE_URL", migrated_url)
    get_settings.cache_clear()
    for job_id in ("j3", "j4"):
        add_job(engine, job_id, "running")

    def event(job_id: str) -> None:
        run(
            engine,
            "INSERT INTO events (job_id, type, message, data, created_at)"
            " VALUES (:id, 'log', 'm', '{}', :now)",
            id=job_id,
        )

    async def scenario() -> None:
        hub = JobWakeups()
        hub.configure(Settings(database_url=migrated_url))
        try:
            async with hub.follow("j3") as news:
                t0 = time.monotonic()
                await news.wait(0.2)  # not listening yet: a poll, which starts listening
                assert time.monotonic() - t0 >= 0.15
                for _ in range(50):
                    if hub.listening:
                        break
                    await asyncio.sleep(0.1)
                assert hub.listening
                news.clear()
                await asyncio.to_thread(event, "j4")
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(news.flag.wait(), 0.5)
                await asyncio.to_thread(event, "j3")
                await asyncio.wait_for(news.flag.wait(), 2.0)
            assert hub.waiting == {}
        finally:
            await hub.close()

    try:
        asyncio.run(scenario())
    finally:
        get_settings.cache_clear()


def test_the_control_loop_is_woken_not_polled(tmp_path: Path) -> None:
    """With its interval and sweep at a minute, a job still goes from submit through
    preparation to success in seconds: every step is a commit that wakes the loop."""
    db = Database()
    slow = {"TRAINYARD_CONTROL_INTERVAL_SECONDS": "60", "TRAINYARD_CONTROL_SWEEP_SECONDS": "60"}
    try:
        with Stack(tmp_path, db.url, extra_env=slow) as stack:
            stack.up()
            client = Client(stack.url, stack.new_key("woken"))
            dataset = ready_dataset(client, tmp_path, lines=300)
            job = client.create_job(
                {
                    "dataset_id": dataset,
                    "training": {"max_steps": 2, "eval_interval": 2},
                    "resources": {"accelerator": "cpu"},
                }
            )
            done = client.wait_job(job["id"], timeout=45)
            assert done["status"] == "succeeded", done
    finally:
        db.close()
