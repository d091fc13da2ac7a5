"""The control leader, on a real PostgreSQL database: a second control process takes over
from a `kill -9`ed leader, and a stale leader that wakes up writes nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from domain.lease import fence, hold_lease
from domain.orm import Lease, Project
from domain.reconcile import tick
from tests.stack import Stack
from trainyard.settings import Settings
from trainyard.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    # A statement that waits on a lock gives up rather than hanging the test.
    engine = create_engine(migrated_url, connect_args={"options": "-c statement_timeout=15000"})
    yield engine
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM leases"))
    engine.dispose()


def control_lease(engine: Engine) -> tuple[str, int] | None:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT holder, epoch FROM leases WHERE name = 'control'")).first()
    return (str(row[0]), int(row[1])) if row else None


def wait_for_holder(
    engine: Engine, timeout: float, other_than: str | None = None
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lease = control_lease(engine)
        if lease and lease[0] != other_than:
            return lease
        time.sleep(0.1)
    raise TimeoutError(f"no new control leader within {timeout} s")


def test_a_second_control_process_takes_over_from_a_killed_leader(
    migrated_url: str, engine: Engine, tmp_path: Path
) -> None:
    with Stack(tmp_path, migrated_url) as stack:
        stack.start("control-1", "control")
        stack.start("control-2", "control")
        holder, epoch = wait_for_holder(engine, 30)
        pids = {name: proc.pid for name, proc in stack.procs.items()}
        leader = next(name for name, pid in pids.items() if holder.endswith(f":{pid}"))
        ttl = 5.0  # max(5, 10 control intervals of 0.2 s)
        stack.stop(leader, signal.SIGKILL)
        killed = time.monotonic()
        new_holder, new_epoch = wait_for_holder(engine, 2 * ttl + 5, other_than=holder)
        took = time.monotonic() - killed
        follower = next(name for name in pids if name != leader)
        assert new_holder.endswith(f":{pids[follower]}")
        assert new_epoch == epoch + 1
        assert took <= 2 * ttl, took


def test_a_stale_leader_that_wakes_up_writes_nothing(engine: Engine, tmp_path: Path) -> None:
    ttl = 1.5
    with Session(engine) as stale, Session(engine) as fresh:
        first = hold_lease(stale, "control", "stale", ttl)
        assert first is not None and first.epoch == 1
        # A tick begins: fenced, it decides something, then its process stalls mid-tick.
        assert fence(stale, first)
        stale.add(Project(id="prj_stale", name="decided by the stale leader"))
        stale.flush()
        time.sleep(ttl + 2)
        # The lease ran out; the server cut the stalled transaction off, so another
        # process takes over at once (in a newer epoch) instead of waiting on its lock.
        second = hold_lease(fresh, "control", "fresh", ttl)
        assert second is not None and second.epoch == 2
        with pytest.raises(DBAPIError):
            stale.commit()
        stale.rollback()
        assert fresh.execute(select(Project).where(Project.id == "prj_stale")).first() is None

        # Waking up with its old leadership, a whole tick writes and sends nothing.
        settings = Settings(storage_root=tmp_path / "storage", broker_url="memory://")
        assert tick(stale, Storage.from_settings(settings), settings, first) == 0
        assert not fence(stale, first)
        stale.rollback()
        lease = fresh.get(Lease, "control")
        assert lease is not None and (lease.holder, lease.epoch) == ("fresh", 2)
        # Taking the lease back later is a new term, never the old one resumed.
        time.sleep(ttl + 0.5)
        again = hold_lease(stale, "control", "stale", ttl)
        assert again is not None and again.epoch == 3
