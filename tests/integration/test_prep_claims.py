"""A dataset is prepared once, by one prep worker.

- Claims on PostgreSQL: a live claim refuses a second worker, a heartbeat keeps it live, a
  quiet one is taken over with a new claim and a fresh staging folder, and the old holder,
  waking up, moves nothing into place.
- A real Celery prep worker `kill -9`ed mid-tokenization, on a stack of its own (no node):
  another worker takes the work over once the claim goes quiet; the shards are complete
  and decode to the corpus, nothing is left staged, and the claims show the takeover.
- The same prep message delivered twice at once: the work runs once; a validation message
  delivered twice at once records one verdict.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from tokenizers import Tokenizer

from domain import claims, migrate
from domain.orm import Dataset, PrepClaim, Project
from tests.conftest import pseudo_corpus, stack_database
from tests.stack import Database, Stack, wait_for
from trainyard.client import Client
from trainyard.messaging import PREPARE_JOB, VALIDATE_DATASET, build_app
from trainyard.settings import Settings

pytestmark = pytest.mark.integration

CLAIM_S = 4.0


# Claims on the database alone.


@pytest.fixture(scope="module")
def sessions() -> Iterator[sessionmaker[Session]]:
    db = Database()
    try:
        migrate.upgrade(db.url)
        engine = create_engine(db.url)
        factory = sessionmaker(engine, expire_on_commit=False)
        with factory() as session:
            session.add(Project(id="prj_claims", name="claims"))
            session.flush()
            for n in (1, 2):
                session.add(
                    Dataset(
                        id=f"ds_claims{n}",
                        project_id="prj_claims",
                        name=f"claims {n}",
                        format="text",
                        kind="text",
                        status="ready",
                        bytes=1,
                        sha256="0" * 64,
                    )
                )
            session.commit()
        yield factory
        engine.dispose()
    finally:
        db.close()


def history(session: Session, dataset_id: str) -> list[tuple[int, str]]:
    rows = session.execute(
        text("SELECT id, status FROM prep_claims WHERE dataset_id = :d ORDER BY id"),
        {"d": dataset_id},
    )
    return [(int(i), str(s)) for i, s in rows]


def test_one_live_claim_per_piece_and_a_quiet_one_is_taken_over(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ttl = 1.5
    target = tmp_path / "tokens" / "byte"
    piece: dict[str, Any] = {
        "kind": claims.Kind.TOKENS,
        "dataset_id": "ds_claims1",
        "key": "byte",
        "target": target,
        "ttl": ttl,
    }
    with sessions() as first, sessions() as second:
        old = claims.take(first, **piece)
        assert old.folder == tmp_path / "tokens" / f".byte.claim-{old.id}" and old.folder.is_dir()
        with pytest.raises(claims.Busy) as busy:
            claims.take(second, **piece)
        assert busy.value.claim_id == old.id

        # Renewed by its heartbeat, the claim outlives its claim time.
        with claims.kept_alive(old, sessions):
            time.sleep(ttl + 1.0)
            with pytest.raises(claims.Busy):
                claims.take(second, **piece)
        old.result.mkdir()
        (old.result / "index.json").write_text("old")

        # Quiet for longer than that: the next worker takes over in a folder of its own.
        time.sleep(ttl + 0.5)
        new = claims.take(second, **piece)
        assert new.id > old.id and new.folder != old.folder
        assert not old.folder.exists() and new.folder.is_dir()
        assert history(second, "ds_claims1") == [(old.id, "expired"), (new.id, "active")]

        # The old holder wakes up: fenced, it moves nothing into place.
        with pytest.raises(claims.Lost):
            claims.move_into_place(first, old)
        assert not target.exists()

        new.result.mkdir()
        (new.result / "index.json").write_text("new")
        claims.move_into_place(second, new)
        second.commit()
        assert (target / "index.json").read_text() == "new"
        assert sorted(p.name for p in target.parent.iterdir()) == ["byte"]
        assert history(second, "ds_claims1") == [(old.id, "expired"), (new.id, "done")]
        done = second.get(PrepClaim, new.id)
        assert done is not None and done.ended_at is not None


def test_a_holder_whose_claim_was_taken_over_learns_it_from_its_heartbeat(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    ttl = 1.0
    piece: dict[str, Any] = {
        "kind": claims.Kind.TOKENIZER,
        "dataset_id": "ds_claims2",
        "key": "tok_x",
        "target": tmp_path / "tokenizer.json",
        "ttl": ttl,
    }
    with sessions() as first, sessions() as second:
        stalled = claims.take(first, **piece)
        time.sleep(ttl + 0.5)
        taker = claims.take(second, **piece)
        with claims.kept_alive(stalled, sessions):
            wait_for(stalled.lost.is_set, 10, "the heartbeat to find the claim gone")
        with pytest.raises(claims.Lost):
            list(claims.watched(iter(range(3)), stalled))
        claims.release(second, taker)
        assert history(second, "ds_claims2") == [(stalled.id, "expired"), (taker.id, "released")]
        assert not taker.folder.exists()


# A real prep worker killed mid-tokenization.


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API, control loop and one prep worker (no node), claims going quiet after 4 s."""
    db = Database()
    try:
        extra = {
            "TRAINYARD_PREP_CLAIM_SECONDS": str(CLAIM_S),
            "TRAINYARD_MAX_UPLOAD_BYTES": str(64 * 1024**2),
        }
        with Stack(tmp_path_factory.mktemp("prep-claims"), db.url, extra_env=extra) as s:
            s.up(node=False)
            yield s
    finally:
        db.close()


@pytest.fixture(scope="module")
def db(stack: Stack) -> Iterator[Engine]:
    with stack_database(stack) as engine:
        yield engine


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack.url, stack.new_key("prep-claims"))


def bpe_job(client: Client, folder: Path, megabytes: float, seed: int) -> tuple[str, str]:
    """Upload a generated corpus and submit a job with a BPE tokenizer trained on it; the
    job's id and the corpus."""
    path = folder / f"corpus-{seed}.txt"
    content = pseudo_corpus(path, megabytes, seed)
    dataset = client.wait_dataset(str(client.upload_dataset(path)["id"]), timeout=180)
    assert dataset["status"] == "ready", dataset
    spec = {
        "dataset_id": dataset["id"],
        "model": {"preset": "tiny"},
        "tokenizer": {"type": "bpe", "vocab_size": 1000},
        "training": {"max_steps": 2, "seq_len": 32, "batch_size": 8},
        "resources": {"processes_per_node": 1, "accelerator": "cpu"},
    }
    return str(client.create_job(spec)["id"]), content


def job_row(db: Engine, job_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT status, prepared, prep_deliveries, dataset_id, tokenizer_key "
                "FROM jobs WHERE id = :j"
            ),
            {"j": job_id},
        ).one()
    return dict(row._mapping)


def claim_rows(db: Engine, dataset_id: str) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, kind, worker, status, job_id, claimed_at, heartbeat_at "
                "FROM prep_claims WHERE dataset_id = :d ORDER BY id"
            ),
            {"d": dataset_id},
        )
        return [dict(r._mapping) for r in rows]


def prepared_events(client: Client, job_id: str) -> list[dict[str, Any]]:
    return [e for e in client.events(job_id, limit=1000)["data"] if e["type"] == "prepared"]


def decoded_shards(tokens_dir: Path, tokenizer: Path) -> tuple[str, dict[str, Any]]:
    """The text the shards hold, after checking each shard's size against the index."""
    index = json.loads((tokens_dir / "index.json").read_text())
    dtype = np.dtype(index["dtype"])
    parts = []
    for shard in index["shards"]:
        path = tokens_dir / shard["path"]
        assert path.stat().st_size == shard["tokens"] * dtype.itemsize, shard
        parts.append(np.fromfile(path, dtype=dtype))
    ids = np.concatenate(parts)
    assert ids.size == index["tokens"]
    return Tokenizer.from_file(str(tokenizer)).decode(ids.tolist()), index


@pytest.fixture(scope="module")
def killed(
    stack: Stack, db: Engine, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A job whose prep worker was killed while it tokenized the dataset, taken over by a
    second worker (2 processes) and prepared."""
    job_id, content = bpe_job(client, tmp_path_factory.mktemp("killed"), 5, seed=1)
    dataset_id = job_row(db, job_id)["dataset_id"]

    def tokenizing() -> dict[str, Any] | None:
        assert job_row(db, job_id)["status"] in ("queued", "preparing")
        rows = claim_rows(db, dataset_id)
        return next((r for r in rows if r["kind"] == "tokens" and r["status"] == "active"), None)

    first = wait_for(tokenizing, 180, "the worker to tokenize the dataset")
    key = job_row(db, job_id)["tokenizer_key"]
    tokens = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "datasets" / dataset_id / "tokens"
    staged = tokens / f".{key}.claim-{first['id']}"
    assert staged.is_dir()
    stack.stop("prep", signal.SIGKILL)
    assert [r["status"] for r in claim_rows(db, dataset_id) if r["kind"] == "tokens"] == ["active"]
    assert staged.exists()  # nobody cleaned up after the dead worker yet

    stack.start("prep-2", "worker", "prep", "--concurrency", "2", "--loglevel", "INFO")
    wait_for(lambda: job_row(db, job_id)["prepared"], 180, "another worker to take over")
    return {
        "job_id": job_id,
        "dataset_id": dataset_id,
        "key": key,
        "content": content,
        "first": first,
        "tokens": tokens,
    }


def test_a_prep_worker_killed_mid_tokenization_is_taken_over_and_the_data_prepared_once(
    stack: Stack, db: Engine, client: Client, killed: dict[str, Any]
) -> None:
    job_id, dataset_id, key = killed["job_id"], killed["dataset_id"], killed["key"]
    rows = claim_rows(db, dataset_id)
    tokenizer_claims = [r for r in rows if r["kind"] == "tokenizer"]
    token_claims = [r for r in rows if r["kind"] == "tokens"]
    # The tokenizer was trained once, by the first worker; the shards were started by it
    # and written once, by a new claim of another worker.
    assert [r["status"] for r in tokenizer_claims] == ["done"]
    assert tokenizer_claims[0]["worker"] == killed["first"]["worker"]
    assert [(r["id"], r["status"]) for r in token_claims] == [
        (killed["first"]["id"], "expired"),
        (token_claims[1]["id"], "done"),
    ]
    assert token_claims[1]["worker"] != killed["first"]["worker"]
    assert {r["job_id"] for r in rows} == {job_id}
    # Taken over once the dead worker's claim had gone unrenewed for the claim time.
    quiet = token_claims[1]["claimed_at"] - token_claims[0]["heartbeat_at"]
    assert quiet.total_seconds() >= CLAIM_S, quiet

    job = job_row(db, job_id)
    assert job["prepared"] and job["prep_deliveries"] == 2  # the killed delivery and one more
    assert len(prepared_events(client, job_id)) == 1
    with db.connect() as conn:
        ready = conn.execute(
            text("SELECT status, tokens FROM dataset_tokens WHERE dataset_id = :d"),
            {"d": dataset_id},
        ).all()

    # Complete and valid: every token the index counts is there, and they decode to the
    # corpus exactly.
    tokenizer = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "tokenizers" / key / "tokenizer.json"
    decoded, index = decoded_shards(killed["tokens"] / key, tokenizer)
    assert ready == [("ready", index["tokens"])]
    assert decoded == killed["content"]
    # Nothing staged is left behind, beside the shards or the tokenizer.
    assert sorted(p.name for p in killed["tokens"].iterdir()) == [key]
    assert sorted(p.name for p in tokenizer.parent.iterdir()) == ["tokenizer.json"]
    assert "went quiet; claim" in stack.log("prep-2")


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def test_a_prep_message_delivered_twice_runs_the_work_once(
    stack: Stack,
    db: Engine,
    client: Client,
    killed: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    job_id, _ = bpe_job(client, tmp_path_factory.mktemp("twice"), 2, seed=2)
    dataset_id = job_row(db, job_id)["dataset_id"]
    wait_for(lambda: job_row(db, job_id)["status"] == "preparing", 120, "the job to prepare")
    # The control loop sent the job's prep message; the same message again, at once, to
    # the worker's second process.
    app = build_app(Settings(broker_url=stack.env["TRAINYARD_BROKER_URL"]))
    queue = stack.env["TRAINYARD_QUEUE_PREFIX"] + "prep"
    app.send_task(PREPARE_JOB, args=[{"job_id": job_id}], queue=queue)
    wait_for(lambda: job_row(db, job_id)["prepared"], 180, "the job to be prepared")
    assert f"job {job_id} waits for prep claim" in stack.log("prep-2")

    rows = claim_rows(db, dataset_id)
    assert [(r["kind"], r["status"]) for r in rows] == [("tokenizer", "done"), ("tokens", "done")]
    assert len({r["worker"] for r in rows}) == 1
    assert len(prepared_events(client, job_id)) == 1
    # The delivery that found the work claimed does not count against the job.
    assert job_row(db, job_id)["prep_deliveries"] == 1

    # Once more after the work is done: nothing changes.
    folder = Path(stack.env["TRAINYARD_STORAGE_ROOT"]) / "datasets" / dataset_id
    before = (files(folder), claim_rows(db, dataset_id), job_row(db, job_id))
    task_id = str(uuid.uuid4())
    app.send_task(PREPARE_JOB, args=[{"job_id": job_id}], queue=queue, task_id=task_id)
    wait_for(lambda: f"[{task_id}] succeeded" in stack.log("prep-2"), 60, "the third delivery")
    assert (files(folder), claim_rows(db, dataset_id), job_row(db, job_id)) == before
    assert len(prepared_events(client, job_id)) == 1


def lock_waits(db: Engine) -> int:
    """Sessions on the database waiting for a lock (read in a transaction of its own: the
    server keeps one snapshot of its activity view per transaction)."""
    with db.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
            or 0
        )


def test_a_validation_message_delivered_twice_records_one_verdict(
    stack: Stack, db: Engine, client: Client, killed: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "twice.txt"
    pseudo_corpus(path, 1, seed=3)
    dataset_id = str(client.upload_dataset(path)["id"])
    assert client.wait_dataset(dataset_id, timeout=120)["status"] == "ready"
    app = build_app(Settings(broker_url=stack.env["TRAINYARD_BROKER_URL"]))
    ids = [str(uuid.uuid4()) for _ in range(2)]
    log_from = len(stack.log("prep-2"))
    # Validating again, and the same message twice: held on the dataset's row until both
    # of the worker's processes have it, so they check the file at the same time.
    with db.connect() as holder:
        holder.execute(
            text("UPDATE datasets SET status = 'validating', prep_deliveries = 0 WHERE id = :d"),
            {"d": dataset_id},
        )
        holder.commit()
        holder.execute(text("SELECT 1 FROM datasets WHERE id = :d FOR UPDATE"), {"d": dataset_id})
        for task_id in ids:
            app.send_task(
                VALIDATE_DATASET,
                args=[{"dataset_id": dataset_id}],
                queue=stack.env["TRAINYARD_QUEUE_PREFIX"] + "prep",
                task_id=task_id,
            )
        wait_for(lambda: lock_waits(db) == 2, 60, "both deliveries to wait on the dataset")
        holder.commit()
    assert client.wait_dataset(dataset_id, timeout=60)["status"] == "ready"
    wait_for(
        lambda: all(f"[{t}] succeeded" in stack.log("prep-2")[log_from:] for t in ids),
        60,
        "both deliveries to end",
    )
    assert stack.log("prep-2")[log_from:].count(f"dataset {dataset_id} is ready") == 1
