"""Dispatch: place prepared jobs on nodes, a whole gang at once, in priority and fair-share
order, and mint their attempts.

Order: lower `priority` first; within a priority, the project using the fewest slots goes
next (recounted after every placement, so one project's many jobs cannot starve another's
one), and between projects that use as few, the one whose last job was placed longest ago
(so on a full cluster, where every project uses nothing while a slot is free, the projects
take turns); within a project, the oldest job. A job that cannot be placed keeps the nodes
of its pool from jobs of a lower priority (no starvation by smaller jobs) and says why in
`waiting_reason`.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.lifecycle import (
    ACTIVE_ATTEMPT,
    WAITING,
    AttemptStatus,
    JobStatus,
    fail,
    record,
    transition,
)
from domain.orm import Attempt, Job, Node, Project, Quota
from domain.run_config import run_config
from trainyard.ids import hash_secret, new_id
from trainyard.messaging import RUN_ATTEMPT, Message
from trainyard.settings import Settings
from trainyard.storage import Storage


@dataclass
class Cluster:
    """Free slots per online node and slots in use per project, kept current while placing."""

    nodes: list[Node]
    free: dict[str, int]
    used_by_project: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # When each project last had a job placed (never: absent).
    placed_at: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session) -> Cluster:
        rows = session.execute(
            select(Attempt.node_id, Job.project_id, func.sum(Attempt.slots))
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.status.in_(ACTIVE_ATTEMPT))
            .group_by(Attempt.node_id, Job.project_id)
        ).all()
        nodes = list(
            session.execute(select(Node).where(Node.status == "online").order_by(Node.name))
            .scalars()
            .all()
        )
        placed = session.execute(
            select(Project.id, Project.last_placed_at).where(Project.last_placed_at.is_not(None))
        ).all()
        cluster = cls(
            nodes=nodes,
            free={n.id: n.slots for n in nodes},
            placed_at={p: at for p, at in placed if at is not None},
        )
        for node_id, project_id, slots in rows:
            if node_id in cluster.free:
                cluster.free[node_id] -= int(slots or 0)
            cluster.used_by_project[project_id] += int(slots or 0)
        return cluster

    def candidates(self, job: Job) -> list[Node]:
        """Online nodes of the job's pool and accelerator."""
        res = job.spec["resources"]
        return [
            n
            for n in self.nodes
            if n.pool == res["pool"] and res["accelerator"] in ("auto", n.accelerator)
        ]

    def place(self, job: Job) -> list[Node] | None:
        """The nodes of a gang that fits now (the emptiest first), or None."""
        res = job.spec["resources"]
        want, count = res["processes_per_node"], res["nodes"]
        fitting = [n for n in self.candidates(job) if self.free[n.id] >= want]
        if len(fitting) < count:
            return None
        # Fill the nodes with most free slots first: fewer gangs share a host's cores.
        fitting.sort(key=lambda n: (-self.free[n.id], n.name))
        return fitting[:count]

    def take(self, job: Job, nodes: list[Node]) -> None:
        want = job.spec["resources"]["processes_per_node"]
        for node in nodes:
            self.free[node.id] -= want
        self.used_by_project[job.project_id] += want * len(nodes)


def slots_of(job: Job) -> int:
    """Slots a job holds while it runs: nodes x processes per node."""
    res = job.spec["resources"]
    return int(res["nodes"]) * int(res["processes_per_node"])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def why_waiting(cluster: Cluster, job: Job) -> str:
    """A person's reason why the job is not placed: `waiting for 2 nodes with 1 free slot`."""
    res = job.spec["resources"]
    want, count = res["processes_per_node"], res["nodes"]
    nodes = cluster.candidates(job)
    fitting = sum(1 for n in nodes if cluster.free[n.id] >= want)
    where = f"in pool {res['pool']!r}" + (
        f" ({res['accelerator']})" if res["accelerator"] != "auto" else ""
    )
    if len(nodes) < count:
        return f"waiting for {_plural(count, 'node')} {where}; {len(nodes)} online"
    return (
        f"waiting for {_plural(count, 'node')} with {_plural(want, 'free slot')}; "
        f"{fitting} of {len(nodes)} online nodes {where} have them"
    )


def _ordered(waiting: list[Job], cluster: Cluster) -> list[Job]:
    """Priority first, then the project using the fewest slots, then the project served
    longest ago, then age (fair share)."""
    by_priority: dict[int, dict[str, list[Job]]] = defaultdict(lambda: defaultdict(list))
    for job in sorted(waiting, key=lambda j: j.created_at):
        by_priority[job.priority][job.project_id].append(job)
    ordered: list[Job] = []
    used = dict(cluster.used_by_project)
    # When each project was last served: (0, time) before this pass, (1, n) for the n-th
    # pick of this pass; a project never served goes before both.
    served: dict[str, tuple[int, float]] = {
        p: (0, at.timestamp()) for p, at in cluster.placed_at.items()
    }
    never = (-1, 0.0)
    for priority in sorted(by_priority):
        queues = by_priority[priority]
        while queues:
            project = min(
                queues,
                key=lambda p: (used.get(p, 0), served.get(p, never), queues[p][0].created_at),
            )
            job = queues[project].pop(0)
            if not queues[project]:
                del queues[project]
            ordered.append(job)
            # Assume it will run: the next pick goes to a project that has less, or that
            # has waited longer since its last turn.
            used[project] = used.get(project, 0) + slots_of(job)
            served[project] = (1, float(len(ordered)))
    return ordered


def _quotas(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Quota.project_id, Quota.max_running_slots).where(
            Quota.max_running_slots.is_not(None)
        )
    ).all()
    return {p: int(v or 0) for p, v in rows}


def _set_reason(job: Job, reason: str | None) -> None:
    if job.waiting_reason != reason:
        job.waiting_reason = reason


def dispatch(session: Session, storage: Storage, settings: Settings, out: list[Message]) -> None:
    """Give each prepared job without a live attempt a new gang of nodes that fits, writing
    its run.json; the run messages go to `out`, to be sent after the commit."""
    ready = list(
        session.execute(
            select(Job).where(Job.status.in_(WAITING), Job.prepared.is_(True))
        ).scalars()
    )
    if not ready:
        return  # the usual tick: nothing to place, and the cluster need not be read
    live = set(
        session.execute(select(Attempt.job_id).where(Attempt.status.in_(ACTIVE_ATTEMPT))).scalars()
    )
    waiting = [job for job in ready if job.id not in live]
    cluster = Cluster.load(session)
    quotas = _quotas(session)
    blocked: dict[str, int] = {}  # pool -> the best priority that could not be placed
    # What runs, read once for the whole tick: the gangs this tick launches are not
    # running yet, so they can be neither victims nor room on its way.
    running = _running(session)
    # Shapes (pool, accelerator, gang, priority) for which preempting could make no room.
    # Within a tick free slots only shrink, so a later job of such a shape finds none
    # either, until a preemption changes what is running: one look per shape, not per job.
    hopeless: set[tuple[object, ...]] = set()
    for job in _ordered(waiting, cluster):
        pool = job.spec["resources"]["pool"]
        if job.priority > blocked.get(pool, 100):
            _set_reason(job, f"waiting behind jobs of priority {blocked[pool]}")
            continue
        cap = quotas.get(job.project_id)
        if cap is not None and cluster.used_by_project[job.project_id] + slots_of(job) > cap:
            _set_reason(
                job,
                f"waiting for the project's running slots quota: "
                f"{cluster.used_by_project[job.project_id]} of {cap} in use, "
                f"the job needs {slots_of(job)}",
            )
            continue
        nodes = cluster.place(job)
        if nodes is None:
            reason = why_waiting(cluster, job)
            shape = _shape(job)
            if shape not in hopeless and _preempt(session, cluster, job, running):
                reason += "; lower-priority jobs are being preempted for it"
                hopeless.clear()
            else:
                hopeless.add(shape)
            _set_reason(job, reason)
            blocked[pool] = min(blocked.get(pool, 100), job.priority)
            continue
        _set_reason(job, None)
        if _launch(session, storage, settings, job, nodes, out):
            cluster.take(job, nodes)


def _shape(job: Job) -> tuple[object, ...]:
    """What decides whether preemption can make room for a job."""
    res = job.spec["resources"]
    return (
        res["pool"],
        res["accelerator"],
        res["nodes"],
        res["processes_per_node"],
        job.priority,
    )


def resend_dispatch(session: Session, settings: Settings, out: list[Message]) -> None:
    """Re-send the run messages that no node has claimed for a while (the broker lost them,
    restarted without persistence, or was away when they were sent). A copy that arrives
    twice is refused by the API on its second `start`."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.dispatch_resend_seconds)
    rows = session.execute(
        select(Attempt, Node.queue)
        .join(Node, Node.id == Attempt.node_id)
        .where(
            Attempt.status == AttemptStatus.STARTING,
            Attempt.outbox.is_not(None),
            Attempt.sent_at < stale,
        )
    ).all()
    for attempt, queue in rows:
        attempt.sent_at = now
        out.append((RUN_ATTEMPT, dict(attempt.outbox or {}), queue))


def _running(session: Session) -> list[tuple[Attempt, Job]]:
    """The live attempts and their jobs."""
    rows = session.execute(
        select(Attempt, Job)
        .join(Job, Job.id == Attempt.job_id)
        .where(Attempt.status.in_(ACTIVE_ATTEMPT))
    ).all()
    return [(attempt, owner) for attempt, owner in rows]


def _preempt(
    session: Session, cluster: Cluster, job: Job, running: list[tuple[Attempt, Job]]
) -> bool:
    """Stop running jobs of a strictly lower priority (lowest first, newest first) when
    that makes room for `job`. Returns whether room is being made (also when jobs stopped
    earlier are still checkpointing, in which case no more are stopped)."""
    pool = job.spec["resources"]["pool"]
    held: dict[str, list[Attempt]] = defaultdict(list)
    jobs: dict[str, Job] = {}
    for attempt, owner in running:
        if owner.spec["resources"]["pool"] == pool:
            held[owner.id].append(attempt)
            jobs[owner.id] = owner
    free = dict(cluster.free)

    def release(job_id: str) -> None:
        for attempt in held[job_id]:
            if attempt.node_id in free:
                free[attempt.node_id] += attempt.slots

    def fits() -> bool:
        trial = Cluster(nodes=cluster.nodes, free=free)
        return trial.place(job) is not None

    stopping = [j for j in jobs.values() if j.status in (JobStatus.PREEMPTED, JobStatus.PAUSED)]
    for victim in stopping:
        release(victim.id)
    if stopping and fits():
        return True  # room is on its way
    victims = sorted(
        (j for j in jobs.values() if j.status == JobStatus.RUNNING and j.priority > job.priority),
        key=lambda j: (-j.priority, -(j.started_at.timestamp() if j.started_at else 0)),
    )
    chosen: list[Job] = []
    for victim in victims:
        release(victim.id)
        chosen.append(victim)
        if fits():
            for v in chosen:
                transition(
                    session,
                    v,
                    JobStatus.PREEMPTED,
                    f"preempted by job {job.id} (priority {job.priority} over {v.priority}); "
                    "checkpointing, it resumes when it fits again",
                    by=job.id,
                )
            return True
    return False


def _launch(
    session: Session,
    storage: Storage,
    settings: Settings,
    job: Job,
    nodes: list[Node],
    out: list[Message],
) -> bool:
    """Mint one attempt row per node rank, all in the caller's transaction."""
    number = job.attempt + 1
    try:
        config = run_config(storage, settings, job, number, nodes[0])
    except (OSError, ValueError) as exc:
        fail(session, job, "preparation_failed", f"token shards unusable: {exc}")
        return False
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(config.to_dict(), indent=2))
    slots = job.spec["resources"]["processes_per_node"]
    now = utcnow()
    for rank, node in enumerate(nodes):
        token, attempt_id = secrets.token_urlsafe(32), new_id("att")
        payload = {
            "attempt_id": attempt_id,
            "job_id": job.id,
            "attempt": number,
            "token": token,
            "run_config": str(folder / "run.json"),
            "nproc": slots,
            "nnodes": len(nodes),
            "node_rank": rank,
        }
        attempt = Attempt(
            id=attempt_id,
            job_id=job.id,
            number=number,
            rank=rank,
            nodes=len(nodes),
            node_id=node.id,
            slots=slots,
            status=AttemptStatus.STARTING.value,
            token_hash=hash_secret(token),
            outbox=payload,
            sent_at=now,
        )
        session.add(attempt)
        out.append((RUN_ATTEMPT, payload, node.queue))
    job.attempt = number
    project = session.get(Project, job.project_id)
    if project is not None:
        project.last_placed_at = now
    names = [n.name for n in nodes]
    record(
        session,
        job,
        "scheduled",
        f"attempt {number} assigned to node{'s' if len(names) > 1 else ''} {', '.join(names)}",
        node=names[0],
        nodes=names,
        attempt=number,
    )
    if job.status == JobStatus.PREEMPTED:
        record(session, job, "resumed", f"attempt {number} resumes the preempted job")
    return True
