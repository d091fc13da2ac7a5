"""Faults and what each may cost, on a deployment of its own (PostgreSQL, a Redis of its
own that the tests restart, Celery, torchrun) with a 5-second node timeout:

- the API down for 60 s (twelve node timeouts): training goes on, no attempt is lost, and
  every event the trainer wrote is stored exactly once;
- SIGTERM to the node worker (a host shutting down): its job checkpoints at once and
  resumes on another node at no cost, with the loss series of an uninterrupted run;
- Redis killed and restarted empty while 2 jobs run and 20 wait: every job runs exactly
  once, and none loses an attempt (the dispatch outbox re-sends what no node claimed).

A constant learning rate makes a job's loss series independent of its length, so long
jobs, stopped when the test has seen what it needs, compare with one short reference.

The stale control leader has its own test (tests/integration/test_control_lease.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import ready_dataset, stack_database
from tests.stack import Database, Stack, ThrowawayRedis, wait_for
from trainyard.client import Client

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

NODE_TIMEOUT_S = 5
OUTAGE_S = 60
QUEUED = 20  # jobs waiting while Redis restarts
# What the trainer itself writes to events.jsonl besides steps (which become metrics).
TRAINER_EVENTS = ("start", "eval", "checkpoint", "log", "preempted", "done", "error")


def spec(dataset_id: str, max_steps: int, checkpoint_interval: int = 1000) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "model": {"preset": "tiny"},
        "training": {
            "max_steps": max_steps,
            "seq_len": 32,
            "batch_size": 8,
            "lr": 3e-3,
            "lr_schedule": "constant",
            "warmup_steps": 1,
            "eval_interval": 1000,
            "eval_batches": 2,
            "checkpoint_interval": checkpoint_interval,
            "seed": 11,
        },
        "resources": {"processes_per_node": 1, "accelerator": "cpu"},
    }


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayRedis]:
    redis = ThrowawayRedis(tmp_path_factory.mktemp("redis"))
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, broker: ThrowawayRedis) -> Iterator[Stack]:
    db = Database()
    try:
        extra = {
            "TRAINYARD_NODE_TIMEOUT_SECONDS": str(NODE_TIMEOUT_S),
            "TRAINYARD_DISPATCH_RESEND_SECONDS": "2",
            "TRAINYARD_NODE_NAME": "first",
        }
        workdir = tmp_path_factory.mktemp("faults")
        with Stack(workdir, db.url, broker_url=broker.url, extra_env=extra) as s:
            s.up()
            yield s
    finally:
        db.close()


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Engine]:
    with stack_database(stack) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("faults"))


@pytest.fixture(scope="module")
def dataset_id(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ready_dataset(client, tmp_path_factory.mktemp("corpus"))


REFERENCE_STEPS, SHORT_STEPS, ENDLESS = 30, 2, 100_000
# Jobs that must still be running when a fault comes: long enough that a fast idle machine
# cannot finish one while the other starts (the learning rate is constant, so their first
# REFERENCE_STEPS losses are the reference's).
RUNNING_STEPS = 300


@pytest.fixture(scope="module")
def reference(client: Client, dataset_id: str) -> dict[int, float]:
    """An uninterrupted run's loss at each step (it also tokenizes the dataset once)."""
    job = client.wait_job(
        str(client.create_job(spec(dataset_id, REFERENCE_STEPS))["id"]), timeout=300
    )
    assert job["status"] == "succeeded", job
    return losses(client, str(job["id"]))


def losses(client: Client, job_id: str) -> dict[int, float]:
    return {int(p["step"]): p["value"] for p in client.metrics(job_id)["loss"]}


def attempts(db: Engine, job_id: str) -> list[tuple[int, str]]:
    with db.connect() as conn:
        return [
            (int(n), str(s))
            for n, s in conn.execute(
                text("SELECT number, status FROM attempts WHERE job_id = :j ORDER BY number"),
                {"j": job_id},
            )
        ]


def trainer_lines(stack: Stack, job_id: str, number: int) -> list[dict[str, Any]]:
    path = (
        Path(stack.env["TRAINYARD_STORAGE_ROOT"])
        / "jobs"
        / job_id
        / f"attempt-{number}"
        / "events.jsonl"
    )
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def online_nodes(db: Engine) -> list[str]:
    with db.connect() as conn:
        return [
            str(n) for (n,) in conn.execute(text("SELECT name FROM nodes WHERE status = 'online'"))
        ]


def running_at_step(client: Client, job_id: str, step: int) -> bool:
    job = client.job(job_id)
    assert job["status"] not in ("succeeded", "failed", "cancelled"), job
    return job["status"] == "running" and job["progress"]["step"] >= step


def test_the_api_down_costs_no_attempt_and_loses_no_event(
    stack: Stack, client: Client, db: Engine, dataset_id: str, reference: dict[int, float]
) -> None:
    job_id = str(client.create_job(spec(dataset_id, ENDLESS))["id"])
    wait_for(lambda: running_at_step(client, job_id, 3), 120, "the job to train")
    stack.stop("api", signal.SIGKILL)
    written = len(trainer_lines(stack, job_id, 1))
    time.sleep(OUTAGE_S)
    # Training went on while nobody could take its reports, and no one gave up on it.
    assert len(trainer_lines(stack, job_id, 1)) > written
    assert attempts(db, job_id) == [(1, "running")]

    stack.start("api", "api", "--port", str(stack.port))
    stack.wait_ready(node=True)
    after = len(trainer_lines(stack, job_id, 1))
    # The buffered reports arrive, and the attempt keeps its lease past another timeout.
    wait_for(lambda: client.job(job_id)["progress"]["step"] >= after, 60, "the replay")
    time.sleep(NODE_TIMEOUT_S + 1)
    assert attempts(db, job_id) == [(1, "running")]
    client.cancel_job(job_id)
    done = client.wait_job(job_id, timeout=120)
    assert done["status"] == "cancelled", done
    assert done["attempt"] == 1 and done["restarts"] == 0
    assert attempts(db, job_id) == [(1, "cancelled")]

    # Every event the trainer wrote is stored exactly once: steps as metrics, the rest as
    # events; and what was trained equals an uninterrupted run.
    lines = trainer_lines(stack, job_id, 1)
    steps = [e["step"] for e in lines if e["type"] == "step"]
    stored = [p["step"] for p in client.metrics(job_id)["loss"]]
    assert stored == steps == list(range(1, len(steps) + 1))
    assert len(steps) > 3
    written_events = Counter((e["type"], e.get("step")) for e in lines if e["type"] != "step")
    events = client.events(job_id, limit=1000)["data"]
    stored_events = Counter(
        (e["type"], e["data"].get("step")) for e in events if e["type"] in TRAINER_EVENTS
    )
    assert stored_events == written_events
    same = {s: v for s, v in losses(client, job_id).items() if s in reference}
    assert same == {s: reference[s] for s in same}


def test_sigterm_to_the_node_worker_checkpoints_and_resumes_elsewhere(
    stack: Stack, client: Client, db: Engine, dataset_id: str, reference: dict[int, float]
) -> None:
    job_id = str(client.create_job(spec(dataset_id, ENDLESS))["id"])
    wait_for(lambda: running_at_step(client, job_id, 3), 120, "the job to train")
    asked = time.monotonic()
    stack.stop("node", signal.SIGTERM, timeout=60)  # a host shutting down
    stopped_in = time.monotonic() - asked
    assert attempts(db, job_id) == [(1, "preempted")]
    checkpoint = [e for e in trainer_lines(stack, job_id, 1) if e["type"] == "checkpoint"]
    assert checkpoint and stopped_in <= 30, (checkpoint, stopped_in)
    saved = int(checkpoint[-1]["step"])
    assert saved >= 3

    stack.start("node", "worker", "node", "--name", "second", "--loglevel", "INFO")
    wait_for(lambda: running_at_step(client, job_id, saved + 3), 180, "the resumed job")
    job = client.job(job_id)
    assert job["attempt"] == 2 and job["restarts"] == 0
    client.cancel_job(job_id)
    assert client.wait_job(job_id, timeout=120)["status"] == "cancelled"
    assert attempts(db, job_id) == [(1, "preempted"), (2, "cancelled")]
    events = client.events(job_id, limit=1000)["data"]
    scheduled = [e["data"]["nodes"] for e in events if e["type"] == "scheduled"]
    assert scheduled == [["first"], ["second"]]
    starts = {e["attempt"]: e["data"] for e in events if e["type"] == "start"}
    assert starts[2]["step"] == saved  # nothing trained twice: it checkpointed on SIGTERM
    series = losses(client, job_id)
    assert sorted(series)[: saved + 3] == list(range(1, saved + 4))
    same = {s: v for s, v in series.items() if s in reference}
    assert same == {s: reference[s] for s in same}


def test_a_redis_restart_loses_no_job_and_no_attempt(
    stack: Stack,
    client: Client,
    db: Engine,
    broker: ThrowawayRedis,
    dataset_id: str,
    reference: dict[int, float],
) -> None:
    # Twenty-two jobs would take minutes of torchrun start-ups on two cores: this node forks
    # each job's rank from a process that has imported torch already. (What is tested here
    # is dispatch; the other faults run under torchrun.)
    stack.stop("node")
    stack.start("node", "worker", "node", "--name", "forking", env={"TRAINYARD_FORK_SERVER": "1"})
    wait_for(lambda: online_nodes(db) == ["forking"], 120, "the forking node")
    running = [str(client.create_job(spec(dataset_id, RUNNING_STEPS))["id"]) for _ in range(2)]
    wait_for(lambda: all(running_at_step(client, j, 1) for j in running), 120, "two jobs to run")
    queued = [str(client.create_job(spec(dataset_id, SHORT_STEPS))["id"]) for _ in range(QUEUED)]
    broker.kill()
    # While Redis is away the running jobs finish and the scheduler places queued ones:
    # their run messages cannot reach any node.
    with db.connect() as conn:
        wait_for(
            lambda: conn.execute(
                text(
                    "SELECT count(*) FROM attempts WHERE status = 'starting' AND outbox IS NOT NULL"
                )
            ).scalar(),
            300,
            "a job placed while the broker is down",
        )
    broker.start()  # empty: every message it held is gone
    for job_id in [*running, *queued]:
        job = client.wait_job(job_id, timeout=600)
        assert job["status"] == "succeeded", (job, stack.log("node")[-3000:])
        if job_id in running:
            series = losses(client, job_id)
            assert sorted(series) == list(range(1, RUNNING_STEPS + 1))
            assert {s: series[s] for s in reference} == reference
        assert job["attempt"] == 1 and job["restarts"] == 0, job
        assert attempts(db, job_id) == [(1, "succeeded")]
        starts = [e for e in client.events(job_id, limit=100)["data"] if e["type"] == "start"]
        assert len(starts) == 1  # ran exactly once
