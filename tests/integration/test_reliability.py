"""Duplicated messages and lost nodes, on a deployment of its own (PostgreSQL, Redis, Celery,
torchrun) whose reconciler gives up on a silent node after 5 seconds."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import ready_dataset, stack_database
from tests.stack import REDIS_URL, Database, Stack, wait_for
from trainyard.client import Client
from trainyard.ids import hash_secret
from trainyard.messaging import RUN_ATTEMPT, build_app
from trainyard.settings import Settings

pytestmark = pytest.mark.integration

NODE_TIMEOUT_S = 5
LOST_STEPS = 300  # the job whose host is lost


def spec(dataset_id: str, **training: Any) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "model": {"preset": "tiny"},
        "training": {
            "max_steps": 5,
            "seq_len": 32,
            "batch_size": 8,
            "lr": 3e-3,
            "warmup_steps": 1,
            "eval_interval": 1000,
            "eval_batches": 2,
            "checkpoint_interval": 1000,
            **training,
        },
        "resources": {"processes_per_node": 1, "accelerator": "cpu"},
    }


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A deployment of its own, so killing its node worker disturbs no other test."""
    db = Database()
    try:
        extra = {"TRAINYARD_NODE_TIMEOUT_SECONDS": str(NODE_TIMEOUT_S)}
        with Stack(tmp_path_factory.mktemp("reliability"), db.url, extra_env=extra) as stack:
            stack.up()
            yield stack
    finally:
        db.close()


@pytest.fixture(scope="module")
def db(own_stack: Stack) -> Iterator[Engine]:
    with stack_database(own_stack) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(own_stack: Stack) -> Client:
    return Client(own_stack.url, own_stack.new_key("reliability"))


@pytest.fixture(scope="module")
def dataset_id(client: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ready_dataset(client, tmp_path_factory.mktemp("corpus"))


def processes_of(marker: str) -> list[int]:
    """Pids of live processes whose command line mentions the marker (a job id)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def snapshot(db: Engine, client: Client, job_id: str) -> dict[str, Any]:
    """Everything a duplicate delivery could change about a job."""
    with db.connect() as conn:
        attempts = conn.execute(
            text(
                "SELECT id, number, status, last_seq, started_at, finished_at, exit_code "
                "FROM attempts WHERE job_id = :j ORDER BY number"
            ),
            {"j": job_id},
        ).all()
        counts = {
            table: conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": job_id}
            ).scalar()
            for table in ("events", "metrics", "checkpoints", "models")
        }
    return {
        "job": client.job(job_id),
        "attempts": [tuple(row) for row in attempts],
        "counts": counts,
    }


def folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def resumed(own_stack: Stack, client: Client, dataset_id: str) -> dict[str, Any]:
    """A job whose host was lost after its first checkpoint, run to its end."""
    # Long enough that the host is still training when the first checkpoint is seen (ranks
    # forked from the warm node worker run the tiny model's 30 steps in about a second).
    job_id = str(
        client.create_job(spec(dataset_id, max_steps=LOST_STEPS, checkpoint_interval=50))["id"]
    )
    checkpoints = Path(own_stack.env["TRAINYARD_STORAGE_ROOT"]) / "jobs" / job_id / "checkpoints"

    def checkpointed() -> bool:
        assert client.job(job_id)["status"] not in ("succeeded", "failed", "cancelled")
        return (checkpoints / "latest").exists()

    wait_for(checkpointed, 180, "the first checkpoint", interval=0.05)
    lost_at = time.monotonic()
    # Lose the host: kill -9 of the node worker alone. Its torchrun and trainers die with
    # it (nobody else kills them), so nothing keeps training unseen.
    assert processes_of(job_id)
    own_stack.stop("node", signal.SIGKILL)
    wait_for(lambda: not processes_of(job_id), 10, "the trainers to die with their node")
    saved = sorted(
        int(p.name.split("-")[1]) for p in checkpoints.glob("step-*") if "." not in p.name
    )
    assert saved and saved[-1] < LOST_STEPS, saved

    own_stack.start("node", "worker", "node", "--loglevel", "INFO")
    wait_for(lambda: client.job(job_id)["attempt"] == 2, 60, "attempt 2")
    requeued_after = time.monotonic() - lost_at
    done = client.wait_job(job_id, timeout=300)
    return {"job": done, "saved": saved, "requeued_after": requeued_after}


def test_a_lost_node_requeues_the_job_and_it_resumes(
    own_stack: Stack, db: Engine, client: Client, resumed: dict[str, Any]
) -> None:
    done = resumed["job"]
    assert done["status"] == "succeeded", (done, own_stack.log("node")[-3000:])
    # Not before the node timeout (less the up to ~1 s between its last report and the kill).
    assert resumed["requeued_after"] >= NODE_TIMEOUT_S - 1.5
    assert done["attempt"] == 2
    assert done["progress"]["step"] == LOST_STEPS
    assert done["model_id"]

    events = client.events(done["id"], limit=1000)["data"]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "preparing", "running", "queued", "running", "succeeded"]
    requeued = [e for e in events if e["type"] == "status" and e["data"]["status"] == "queued"]
    assert "attempt 1 lost" in requeued[1]["message"]

    starts = {e["attempt"]: e["data"] for e in events if e["type"] == "start"}
    assert starts[1]["step"] == 0 and starts[1]["resumed_from"] is None
    assert starts[2]["resumed_from"], starts[2]
    assert starts[2]["step"] in resumed["saved"] and starts[2]["step"] >= 10

    with db.connect() as conn:
        attempts = dict(
            conn.execute(
                text("SELECT number, status FROM attempts WHERE job_id = :j"), {"j": done["id"]}
            ).all()
        )
    assert attempts == {1: "lost", 2: "succeeded"}
    assert [c["step"] for c in client.checkpoints(done["id"])][-1] == LOST_STEPS
    assert client.metrics(done["id"])["loss"][-1]["step"] == LOST_STEPS


@pytest.mark.parametrize("number", [1, 2], ids=["lost-attempt", "succeeded-attempt"])
def test_a_message_delivered_twice_does_nothing_the_second_time(
    own_stack: Stack, db: Engine, client: Client, resumed: dict[str, Any], number: int
) -> None:
    job_id = resumed["job"]["id"]
    assert resumed["job"]["status"] == "succeeded"
    with db.connect() as conn:
        attempt_id, queue = conn.execute(
            text(
                "SELECT a.id, n.queue FROM attempts a JOIN nodes n ON n.id = a.node_id "
                "WHERE a.job_id = :j AND a.number = :n"
            ),
            {"j": job_id, "n": number},
        ).one()
    # The real token is only in the first Celery message; give the attempt one we know.
    token = secrets.token_urlsafe(32)
    with db.begin() as conn:
        conn.execute(
            text("UPDATE attempts SET token_hash = :h WHERE id = :a"),
            {"h": hash_secret(token), "a": attempt_id},
        )
    storage = Path(own_stack.env["TRAINYARD_STORAGE_ROOT"])
    folder = storage / "jobs" / job_id / f"attempt-{number}"
    before, files_before = snapshot(db, client, job_id), folder_state(storage / "jobs" / job_id)

    broker = Settings(broker_url=own_stack.env.get("TRAINYARD_BROKER_URL", REDIS_URL))
    build_app(broker).send_task(
        RUN_ATTEMPT,
        args=[
            {
                "attempt_id": attempt_id,
                "job_id": job_id,
                "attempt": number,
                "token": token,
                "run_config": str(folder / "run.json"),
                "nproc": 1,
            }
        ],
        queue=queue,
    )
    wait_for(
        lambda: f"attempt {attempt_id} not started" in own_stack.log("node"),
        30,
        "the node worker to refuse the duplicate",
    )
    time.sleep(1.0)
    assert not processes_of(job_id)
    assert snapshot(db, client, job_id) == before
    assert folder_state(storage / "jobs" / job_id) == files_before
