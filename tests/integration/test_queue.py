"""The fair queue end to end, on a deployment of its own (PostgreSQL, Redis, Celery node
workers, the trainer's ranks) with two nodes: `solo` (1 slot, pool `default`) and `pair`
(2 slots, pool `pair`).

- preemption: a priority-10 job stops a running priority-80 one, which checkpoints, waits
  as `preempted` and resumes from its checkpoint once the other has succeeded, at no cost
  and with the loss series of an uninterrupted run;
- pause and resume: the job checkpoints and frees its node; both calls are idempotent, and
  a state that cannot take them is a 409 naming it;
- quotas over the API: queued jobs, storage bytes and the priority cap refuse with 429
  `quota_exceeded` and store nothing; over running slots a job waits and says why;
- fair share: on one slot, another project's one job runs before a project's second.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import ready_dataset, stack_database
from tests.stack import Database, Stack, wait_for
from trainyard.client import Client, TrainyardError

pytestmark = pytest.mark.integration

# Steps heavy enough (2048 tokens) that a job seen at step 3 is far from its end when the
# scheduler acts on it, and few enough that a whole run takes seconds.
STEPS = 120


def spec(
    dataset_id: str, steps: int = STEPS, light: bool = False, **resources: Any
) -> dict[str, Any]:
    """The tiny model at a constant learning rate, checkpointing every 10 steps."""
    return {
        "dataset_id": dataset_id,
        "model": {"preset": "tiny"},
        "training": {
            "max_steps": steps,
            "seq_len": 32 if light else 64,
            "batch_size": 8 if light else 32,
            "lr": 3e-3,
            "lr_schedule": "constant",
            "warmup_steps": 1,
            "eval_interval": 10_000,
            "eval_batches": 2,
            "checkpoint_interval": 10,
            "seed": 5,
        },
        "resources": {"processes_per_node": 1, "accelerator": "cpu", **resources},
    }


def start_node(stack: Stack, name: str, slots: int, pool: str) -> None:
    stack.start(
        f"node-{name}",
        *("worker", "node", "--name", name, "--slots", str(slots), "--pool", pool),
        *("--loglevel", "INFO"),
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = Database()
    try:
        with Stack(tmp_path_factory.mktemp("queue"), db.url) as s:
            s.up(node=False)
            start_node(s, "solo", 1, "default")
            start_node(s, "pair", 2, "pair")
            with stack_database(s) as engine, engine.connect() as conn:
                wait_for(
                    lambda: (
                        conn.execute(
                            text("SELECT count(*) FROM nodes WHERE status = 'online'")
                        ).scalar()
                        == 2
                    ),
                    90,
                    "two nodes online",
                )
            yield s
    finally:
        db.close()


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Engine]:
    with stack_database(stack) as engine:
        yield engine


@pytest.fixture(scope="module")
def admin_key(stack: Stack) -> str:
    return stack.cli("keys", "create", "--project", "ops", "--admin").split()[-1]


@pytest.fixture(scope="module")
def admin(stack: Stack, admin_key: str) -> Client:
    return Client(stack.url, admin_key)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("queue"))


@pytest.fixture(scope="module")
def dataset_id(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ready_dataset(client, tmp_path_factory.mktemp("corpus"))


def job_status(client: Client, job_id: str) -> str:
    return str(client.job(job_id)["status"])


def running_at_step(client: Client, job_id: str, step: int) -> bool:
    job = client.job(job_id)
    assert job["status"] not in ("succeeded", "failed", "cancelled"), job
    return job["status"] == "running" and job["progress"]["step"] >= step


def attempts(db: Engine, job_id: str) -> list[tuple[int, str]]:
    with db.connect() as conn:
        return [
            (int(n), str(s))
            for n, s in conn.execute(
                text("SELECT number, status FROM attempts WHERE job_id = :j ORDER BY number"),
                {"j": job_id},
            )
        ]


def losses(client: Client, job_id: str) -> list[tuple[int, float]]:
    """Every loss point stored, in order: a step trained twice would show twice."""
    return [(int(p["step"]), p["value"]) for p in client.metrics(job_id)["loss"]]


def events(client: Client, job_id: str) -> list[dict[str, Any]]:
    return list(client.events(job_id, limit=1000)["data"])


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def starts(client: Client, job_id: str) -> dict[int, dict[str, Any]]:
    """The trainer's `start` event of each attempt: the step it began at."""
    return {e["attempt"]: e["data"] for e in events(client, job_id) if e["type"] == "start"}


def test_a_higher_priority_job_preempts_and_the_victim_resumes_at_no_cost(
    client: Client, db: Engine, dataset_id: str
) -> None:
    low = str(client.create_job(spec(dataset_id, priority=80))["id"])
    wait_for(lambda: running_at_step(client, low, 3), 120, "the low-priority job to train")
    # The same run (same seed) at priority 10: its series is the uninterrupted reference.
    high = str(client.create_job(spec(dataset_id, priority=10))["id"])
    wait_for(lambda: job_status(client, low) == "preempted", 60, "the preemption")
    preempted = [
        e
        for e in events(client, low)
        if e["type"] == "status" and e["data"]["status"] == "preempted"
    ]
    assert preempted and preempted[0]["data"]["by"] == high, preempted
    assert f"preempted by job {high} (priority 10 over 80)" in preempted[0]["message"]

    done_high = client.wait_job(high, timeout=180)
    assert done_high["status"] == "succeeded", done_high
    done_low = client.wait_job(low, timeout=180)
    assert done_low["status"] == "succeeded", done_low
    # The victim ran again only once the job that preempted it had finished.
    resumed = [e for e in events(client, low) if e["type"] == "resumed"]
    assert resumed and at(resumed[0]["created_at"]) >= at(done_high["finished_at"]), resumed

    assert attempts(db, low) == [(1, "preempted"), (2, "succeeded")]
    assert done_low["attempt"] == 2 and done_low["restarts"] == 0  # cost it nothing
    begun = starts(client, low)
    saved = int(begun[2]["step"])
    assert begun[1]["step"] == 0 and 3 <= saved < STEPS, begun
    assert begun[2]["resumed_from"], begun  # from the checkpoint written on SIGTERM
    # Nothing trained twice, and the loss is exactly that of the uninterrupted run.
    assert losses(client, low) == losses(client, high)
    assert [s for s, _ in losses(client, low)] == list(range(1, STEPS + 1))


def test_pause_frees_the_node_and_resume_continues_from_the_checkpoint(
    client: Client, db: Engine, dataset_id: str
) -> None:
    job_id = str(client.create_job(spec(dataset_id))["id"])
    wait_for(lambda: running_at_step(client, job_id, 3), 120, "the job to train")
    paused = client.pause_job(job_id)
    assert paused["status"] == "paused"
    wait_for(lambda: attempts(db, job_id) == [(1, "preempted")], 60, "the trainer to stop")
    saved = [c["step"] for c in client.checkpoints(job_id)]
    assert saved and 3 <= saved[-1] < STEPS, saved
    again = client.pause_job(job_id)  # idempotent: the same answer, nothing changes
    assert (again["status"], again["attempt"]) == ("paused", 1)

    # Its node is free: another job runs to its end while it stays paused.
    other = str(client.create_job(spec(dataset_id, steps=5, light=True))["id"])
    assert client.wait_job(other, timeout=120)["status"] == "succeeded"
    assert job_status(client, job_id) == "paused"
    with pytest.raises(TrainyardError) as refused:
        client.pause_job(other)
    assert (refused.value.status, refused.value.code) == (409, "job_not_pausable")
    assert "succeeded" in refused.value.message and refused.value.details["status"] == "succeeded"

    assert client.resume_job(job_id)["status"] == "queued"
    wait_for(lambda: running_at_step(client, job_id, saved[-1] + 1), 120, "the resumed job")
    with pytest.raises(TrainyardError) as refused:
        client.resume_job(job_id)
    assert (refused.value.status, refused.value.code) == (409, "job_not_resumable")
    assert "running" in refused.value.message and refused.value.details["status"] == "running"

    done = client.wait_job(job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert (done["attempt"], done["restarts"]) == (2, 0)
    assert attempts(db, job_id) == [(1, "preempted"), (2, "succeeded")]
    assert int(starts(client, job_id)[2]["step"]) == saved[-1]
    assert [s for s, _ in losses(client, job_id)] == list(range(1, STEPS + 1))


def stored(storage: Path) -> tuple[list[str], list[str]]:
    """The dataset folders and the uploads in flight."""
    folders = sorted(p.name for p in (storage / "datasets").iterdir())
    return folders, sorted(p.name for p in (storage / "tmp").iterdir())


def test_quotas_refuse_what_is_over_them_and_store_nothing(
    stack: Stack, admin: Client, admin_key: str, db: Engine, tmp_path: Path
) -> None:
    member = Client(stack.url, stack.new_key("capped"), max_retries=0)
    with pytest.raises(TrainyardError) as forbidden:
        member.set_quota("capped", max_queued_jobs=1)
    assert forbidden.value.status == 403
    dataset_id = ready_dataset(member, tmp_path, lines=300)

    # Queued jobs: one waits (its pool has no node), a second is refused.
    admin.set_quota("capped", max_queued_jobs=1)
    waiting = str(member.create_job(spec(dataset_id, pool="nowhere"))["id"])
    with pytest.raises(TrainyardError) as over:
        member.create_job(spec(dataset_id, pool="nowhere"))
    assert (over.value.status, over.value.code) == (429, "quota_exceeded")
    assert over.value.details == {"quota": "max_queued_jobs", "limit": 1, "used": 1}
    assert "1 queued jobs" in over.value.message and "max_queued_jobs is 1" in over.value.message
    assert [j["id"] for j in member.request("GET", "/v1/jobs")["data"]] == [waiting]
    member.cancel_job(waiting)

    # Storage: an upload that would go over is refused, and neither a row nor a file stays.
    used = int(admin.quota("capped")["storage_bytes"])
    admin.set_quota("capped", max_storage_bytes=used + 100)
    big = tmp_path / "big.txt"
    big.write_text("the king sails over the river\n" * 20)  # 600 bytes
    storage = Path(stack.env["TRAINYARD_STORAGE_ROOT"])
    before = stored(storage)
    with pytest.raises(TrainyardError) as over:
        member.upload_dataset(big)
    assert (over.value.status, over.value.code) == (429, "quota_exceeded")
    assert over.value.details == {
        "quota": "max_storage_bytes",
        "limit": used + 100,
        "used": used,
        "adding": 600,
    }
    assert [d["id"] for d in member.request("GET", "/v1/datasets")["data"]] == [dataset_id]
    assert stored(storage) == before

    # The priority cap, set with the CLI: a default is clamped to it, a better one refused.
    shown = stack.cli(
        *("quotas", "set", "--project", "capped", "--best-priority", "60", "--key", admin_key)
    )
    assert "best_priority  60" in shown
    assert admin.quota("capped")["best_priority"] == 60
    assert admin.quota("capped")["max_storage_bytes"] is None  # `set` replaces the quota
    clamped = member.create_job(spec(dataset_id, pool="nowhere"))
    assert clamped["spec"]["resources"]["priority"] == 60
    member.cancel_job(clamped["id"])
    with pytest.raises(TrainyardError) as over:
        member.create_job(spec(dataset_id, pool="nowhere", priority=10))
    assert (over.value.status, over.value.code) == (429, "quota_exceeded")
    assert over.value.details == {
        "quota": "best_priority",
        "limit": 60,
        "asked": 10,
        "field": "resources.priority",
    }
    assert "resources.priority 10" in over.value.message and "of 60" in over.value.message
    allowed = member.create_job(spec(dataset_id, pool="nowhere", priority=70))
    assert allowed["spec"]["resources"]["priority"] == 70
    member.cancel_job(allowed["id"])
    with db.connect() as conn:
        count = conn.execute(
            text(
                "SELECT count(*) FROM jobs j JOIN projects p ON p.id = j.project_id "
                "WHERE p.name = 'capped'"
            )
        ).scalar()
    assert count == 3  # the refused submits stored nothing

    # Running slots: a second job waits, saying why, though its node has a free slot; it
    # runs once the first has finished.
    admin.set_quota("capped", max_running_slots=1)
    first = str(member.create_job(spec(dataset_id, pool="pair"))["id"])
    second = str(member.create_job(spec(dataset_id, steps=5, light=True, pool="pair"))["id"])
    wait_for(lambda: running_at_step(member, first, 1), 120, "the first job to run")
    reason = wait_for(
        lambda: (j := member.job(second))["status_reason"] and j["status_reason"], 60, "a reason"
    )
    assert reason == (
        "waiting for the project's running slots quota: 1 of 1 in use, the job needs 1"
    )
    assert job_status(member, second) in ("queued", "preparing")
    pair = next(n for n in admin.nodes() if n["name"] == "pair")
    assert pair["free_slots"] == 1
    done = member.wait_job(second, timeout=180)
    assert done["status"] == "succeeded", done
    finished_first = member.job(first)
    assert finished_first["status"] == "succeeded"
    assert at(done["started_at"]) >= at(finished_first["finished_at"])


def test_fair_share_another_projects_job_runs_before_a_projects_second(
    stack: Stack, client: Client, dataset_id: str, tmp_path: Path
) -> None:
    other = Client(stack.url, stack.new_key("other"))
    other_dataset = ready_dataset(other, tmp_path, lines=300)
    short = spec(dataset_id, steps=3, light=True)
    first = str(client.create_job(spec(dataset_id, steps=100_000, light=True))["id"])
    wait_for(lambda: running_at_step(client, first, 1), 120, "the first job to run")
    mine = [str(client.create_job(short)["id"]) for _ in range(2)]
    theirs = str(other.create_job(spec(other_dataset, steps=3, light=True))["id"])
    # All three wait for the one slot (and say so) before it frees.
    for job_id, owner in [(mine[0], client), (mine[1], client), (theirs, other)]:
        wait_for(lambda j=job_id, o=owner: o.job(j)["status_reason"], 60, "a waiting reason")
    client.cancel_job(first)
    done = {j: client.wait_job(j, timeout=120) for j in mine}
    done[theirs] = other.wait_job(theirs, timeout=120)
    assert all(j["status"] == "succeeded" for j in done.values()), done
    order = sorted(done, key=lambda j: at(done[j]["started_at"]))
    assert order == [theirs, *mine]
