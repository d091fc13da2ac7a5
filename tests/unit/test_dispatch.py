"""The scheduler's choices, on ORM objects alone: gangs placed whole or not at all, the
waiting reason, priority first, then fair share between projects; then whole dispatch
passes on a SQLite database: preemption, and a long queue that costs no more queries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session

from domain import migrate
from domain.dispatch import Cluster, _ordered, dispatch, why_waiting
from domain.lifecycle import AttemptStatus, JobStatus
from domain.orm import Attempt, Dataset, Event, Job, Node, Project
from trainyard.settings import Settings
from trainyard.storage import Storage

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(name: str, slots: int, pool: str = "default", accelerator: str = "cpu") -> Node:
    return Node(id=f"node_{name}", name=name, slots=slots, pool=pool, accelerator=accelerator)


def job(n: int, project: str = "p", nodes: int = 1, processes: int = 1, priority: int = 50) -> Job:
    resources: dict[str, Any] = {
        "nodes": nodes,
        "processes_per_node": processes,
        "pool": "default",
        "accelerator": "auto",
    }
    return Job(
        id=f"job_{n}",
        project_id=project,
        priority=priority,
        spec={"resources": resources},
        created_at=T0 + timedelta(seconds=n),
    )


def cluster(free: dict[str, int], **used: int) -> Cluster:
    nodes = [node(name, slots) for name, slots in free.items()]
    c = Cluster(nodes=nodes, free={n.id: n.slots for n in nodes})
    c.used_by_project.update(used)
    return c


def test_a_gang_gets_distinct_nodes_the_emptiest_first() -> None:
    c = cluster({"a": 2, "b": 1, "c": 4})
    placed = c.place(job(1, nodes=2))
    assert [n.name for n in placed or []] == ["c", "a"]
    c.take(job(1, nodes=2), placed or [])
    assert c.free == {"node_a": 1, "node_b": 1, "node_c": 3}


def test_a_gang_that_does_not_fit_whole_gets_nothing_and_a_reason() -> None:
    c = cluster({"a": 2, "b": 1})
    big = job(1, nodes=2, processes=2)
    assert c.place(big) is None
    assert c.free == {"node_a": 2, "node_b": 1}
    assert why_waiting(c, big) == (
        "waiting for 2 nodes with 2 free slots; 1 of 2 online nodes in pool 'default' have them"
    )
    assert why_waiting(c, job(2, nodes=3)) == ("waiting for 3 nodes in pool 'default'; 2 online")


def test_lower_priority_numbers_go_first() -> None:
    jobs = [job(1, priority=50), job(2, priority=10), job(3, priority=99), job(4, priority=10)]
    assert [j.id for j in _ordered(jobs, cluster({"a": 1}))] == [
        "job_2",
        "job_4",
        "job_1",
        "job_3",
    ]


def test_fair_share_one_project_s_many_jobs_do_not_starve_another_s_one() -> None:
    many = [job(n, project="big") for n in range(1, 201)]
    late = job(500, project="small")
    order = [j.id for j in _ordered([*many, late], cluster({"a": 1}))]
    assert order.index("job_500") == 1  # right after big's first: small uses fewer slots
    assert order[:3] == ["job_1", "job_500", "job_2"]


def test_fair_share_counts_the_slots_each_project_already_runs() -> None:
    order = _ordered([job(1, project="busy"), job(2, project="idle")], cluster({"a": 1}, busy=4))
    assert [j.id for j in order] == ["job_2", "job_1"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Session, list[str]]]:
    """A session on a fresh migrated SQLite database with one project, one ready dataset
    and one online node of one slot; and the SQL statements the session sends."""
    url = f"sqlite:///{tmp_path / 'dispatch.db'}"
    migrate.upgrade(url)
    engine = create_engine(url)
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    with Session(engine) as session:
        session.add(Project(id="prj_a", name="a"))
        session.add(
            Dataset(
                id="ds_a",
                project_id="prj_a",
                name="d",
                format="text",
                kind="text",
                status="ready",
                bytes=1,
                sha256="0" * 64,
            )
        )
        session.add(Node(id="node_1", name="n1", host="h", queue="q", accelerator="cpu", slots=1))
        session.commit()
        yield session, sent
    engine.dispose()


def add_job(session: Session, n: int, status: JobStatus, priority: int) -> Job:
    """A prepared one-slot job of project a."""
    new = job(n, project="prj_a", priority=priority)
    new.spec = {"resources": {**new.spec["resources"], "accelerator": "cpu"}}
    new.name, new.type, new.status, new.dataset_id = "j", "pretrain", status.value, "ds_a"
    new.prepared = True
    session.add(new)
    return new


def run_on_the_node(session: Session, running: Job) -> None:
    """Give the job the node's one slot."""
    session.add(
        Attempt(
            id=f"att_{running.id}",
            job_id=running.id,
            number=1,
            node_id="node_1",
            slots=1,
            status=AttemptStatus.RUNNING.value,
            token_hash="0" * 64,
        )
    )
    running.attempt = 1


def dispatch_once(session: Session, tmp_path: Path) -> list[Any]:
    """One dispatch pass, committed; the messages it would send."""
    settings = Settings(storage_root=tmp_path / "storage", data_dir=tmp_path / "data")
    out: list[Any] = []
    dispatch(session, Storage.from_settings(settings), settings, out)
    session.commit()
    return out


def test_a_longer_queue_costs_no_more_statements(
    db: tuple[Session, list[str]], tmp_path: Path
) -> None:
    session, sent = db
    run_on_the_node(session, add_job(session, 0, JobStatus.RUNNING, priority=10))
    counts = []
    for n in (5, 100):  # waiting jobs that nothing lower may make room for
        for i in range(len(counts) * 5, n):
            add_job(session, 100 + i, JobStatus.PREPARING, priority=50)
        session.commit()
        sent.clear()
        assert dispatch_once(session, tmp_path) == []
        counts.append(len(sent))
        reasons = {j.waiting_reason for j in session.query(Job).filter_by(status="preparing")}
        assert reasons == {
            "waiting for 1 node with 1 free slot; "
            "0 of 1 online nodes in pool 'default' (cpu) have them"
        }
    assert counts[0] == counts[1], counts


def test_a_queue_of_higher_priority_jobs_preempts_the_lower_one_once(
    db: tuple[Session, list[str]], tmp_path: Path
) -> None:
    session, _ = db
    low = add_job(session, 0, JobStatus.RUNNING, priority=90)
    run_on_the_node(session, low)
    waiting = [add_job(session, 100 + i, JobStatus.PREPARING, priority=10) for i in range(20)]
    session.commit()
    for _ in range(2):  # the second pass finds it checkpointing and stops nothing more
        assert dispatch_once(session, tmp_path) == []
        session.refresh(low)
        assert low.status == JobStatus.PREEMPTED
        moves = session.query(Event).filter_by(job_id=low.id, type="status").all()
        assert [e.data["status"] for e in moves] == ["preempted"]
        assert all(
            (j.waiting_reason or "").endswith("lower-priority jobs are being preempted for it")
            for j in waiting
        )


def test_on_a_full_cluster_projects_take_turns() -> None:
    # One slot, just freed: both projects use nothing. The project whose job was placed
    # last waits for the one never served, though its queued jobs are older.
    c = cluster({"a": 1})
    c.placed_at["many"] = T0 + timedelta(seconds=100)
    many = [job(n, project="many") for n in range(2, 6)]
    one = job(50, project="one")
    assert [j.id for j in _ordered([*many, one], c)][:3] == ["job_50", "job_2", "job_3"]


def test_between_projects_served_before_the_one_served_longest_ago_goes_first() -> None:
    c = cluster({"a": 1})
    c.placed_at.update(recent=T0 + timedelta(seconds=90), earlier=T0 + timedelta(seconds=10))
    order = _ordered([job(1, project="recent"), job(2, project="earlier")], c)
    assert [j.id for j in order] == ["job_2", "job_1"]
