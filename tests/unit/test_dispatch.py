"""The scheduler's choices, on ORM objects alone: gangs placed whole or not at all, the
waiting reason, priority first, then fair share between projects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from domain.dispatch import Cluster, _ordered, why_waiting
from domain.orm import Job, Node

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
