"""Faults with timings: what each costs, on a real deployment (PostgreSQL, a Redis of its
own that is killed, Celery, torchrun over gloo on CPU), and `trainyard up` for the last.

Scenarios (the numbers of the cluster fault list):
  1   kill -9 of the node worker in the middle of a job; a new node starts at once
  1b  kill -9 of one node worker of a 2-node job; a replacement node starts at once
  2   the API down for --outage seconds (60) while a job trains
  3   Redis killed and restarted empty while 2 jobs run and 20 wait
  5   kill -9 of the control leader with a second control process waiting
  6   kill -9 of the prep worker mid-tokenization; a new prep worker starts at once
  7   SIGTERM to the node worker (a host shutting down); a new node starts at once
  8   `trainyard up`: kill -9 of its node worker process while a job trains

Per scenario: time to detect (the fault to the platform acting on it: the attempt declared
lost or preempted, the claim or lease taken over), time to resume (the fault to the first
training step of the new attempt, or what the scenario resumes), steps trained twice, and
attempts used. The deployment declares a node lost after 5 s of silence, re-sends an
unclaimed run message after 2 s, and takes over a prep claim after 4 s; jobs checkpoint
every 20 steps.

    cd bench && ../.venv/bin/python faults.py [--only 1,2] [--results RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import ROOT, children, corpus, load, machine, pseudo_corpus, wait_http
from results import replace_section
from sqlalchemy import create_engine, text

from tests.stack import Database, Stack, ThrowawayRedis
from tests.stack import wait_for as stack_wait_for
from trainyard.client import Client
from trainyard.net import free_port

NODE_TIMEOUT_S = 5
CLAIM_S = 4
CHECKPOINT_EVERY = 20
ENDLESS = 100_000
MARK_BEGIN = "<!-- bench/faults.py: begin -->"
MARK_END = "<!-- bench/faults.py: end -->"


@dataclass
class Result:
    scenario: str
    detect: float | None
    resume: float | None
    repeated: int | None
    attempts: str
    note: str


def spec(
    dataset_id: str,
    nodes: int = 1,
    checkpoint_interval: int = CHECKPOINT_EVERY,
    max_steps: int = ENDLESS,
) -> dict[str, Any]:
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
            "eval_interval": 100_000,
            "eval_batches": 2,
            "checkpoint_interval": checkpoint_interval,
            "seed": 11,
        },
        "resources": {"nodes": nodes, "processes_per_node": 1, "accelerator": "cpu"},
    }


# Fine polling: the fault timings are read off these waits.
wait_for = functools.partial(stack_wait_for, interval=0.05)


def stamp(value: str | datetime) -> float:
    """An RFC 3339 time (or a datetime) as a Unix timestamp."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Run:
    """Reads a job's attempts from the trainer's own event files under a storage root."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage

    def lines(self, job_id: str, number: int) -> list[dict[str, Any]]:
        path = self.storage / "jobs" / job_id / f"attempt-{number}" / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def steps(self, job_id: str, number: int) -> list[dict[str, Any]]:
        return [e for e in self.lines(job_id, number) if e["type"] == "step"]

    def last_step(self, job_id: str, number: int) -> int:
        return max((int(e["step"]) for e in self.steps(job_id, number)), default=0)

    def first_step_at(self, job_id: str, number: int) -> float | None:
        steps = self.steps(job_id, number)
        return stamp(steps[0]["time"]) if steps else None

    def start_step(self, job_id: str, number: int) -> int:
        starts = [e for e in self.lines(job_id, number) if e["type"] == "start"]
        return int(starts[0]["step"])

    def checkpointed(self, job_id: str) -> bool:
        return (self.storage / "jobs" / job_id / "checkpoints" / "latest").exists()

    def repeated(self, job_id: str, before: int, after: int) -> int:
        """Steps the attempt `after` trained that `before` had trained already."""
        return max(0, self.last_step(job_id, before) - self.start_step(job_id, after))


class Deployment:
    """The Stack the scenarios share, with a Redis of its own and node workers by name."""

    def __init__(self, workdir: Path, database: Database, broker: ThrowawayRedis) -> None:
        self.broker = broker
        env = {
            "TRAINYARD_NODE_TIMEOUT_SECONDS": str(NODE_TIMEOUT_S),
            "TRAINYARD_DISPATCH_RESEND_SECONDS": "2",
            "TRAINYARD_PREP_CLAIM_SECONDS": str(CLAIM_S),
            "TRAINYARD_MAX_UPLOAD_BYTES": str(64 * 1024**2),
            "TRAINYARD_RATE_LIMITS": "off",
            "TRAINYARD_NODE_NAME": "n1",
        }
        self.db = create_engine(database.url)
        self.stack = Stack(workdir, database.url, broker_url=broker.url, extra_env=env)
        self.stack.up(node=False)
        self.nodes = 0
        self.node = self.start_node()
        self.client = Client(self.stack.url, self.stack.new_key("faults"))
        self.run = Run(Path(self.stack.env["TRAINYARD_STORAGE_ROOT"]))
        path = workdir / "corpus.txt"
        path.write_text(corpus(lines=1500))
        ds = self.client.wait_dataset(str(self.client.upload_dataset(path)["id"]), timeout=300)
        self.dataset_id = str(ds["id"])
        # One short job tokenizes the dataset, so later jobs start at once.
        first = self.client.create_job(spec(self.dataset_id, max_steps=2))
        assert self.client.wait_job(str(first["id"]), timeout=600)["status"] == "succeeded"

    def start_node(self, slots: int = 2) -> str:
        self.nodes += 1
        name = f"n{self.nodes}"
        self.stack.start(
            name, "worker", "node", "--name", name, "--slots", str(slots), "--loglevel", "INFO"
        )
        wait_for(lambda: self.online(name), 120, f"node {name} online", interval=0.2)
        return name

    def online(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM nodes WHERE name = :n AND status = 'online'", n=name))

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.db.connect() as conn:
            return list(conn.execute(text(query), params).all())

    def attempts(self, job_id: str) -> list[Any]:
        return self.sql(
            "SELECT number, rank, status, finished_at FROM attempts WHERE job_id = :j "
            "ORDER BY number, rank",
            j=job_id,
        )

    def training(self, job_id: str, step: int, number: int = 1) -> None:
        """Wait until attempt `number` has trained `step` steps (and checkpointed once)."""

        def ready() -> bool:
            status = self.client.job(job_id)["status"]
            assert status not in ("succeeded", "failed", "cancelled"), status
            return self.run.last_step(job_id, number) >= step and self.run.checkpointed(job_id)

        wait_for(ready, 300, f"job {job_id} to train {step} steps", interval=0.1)

    def stop_job(self, job_id: str) -> None:
        self.client.cancel_job(job_id)
        self.client.wait_job(job_id, timeout=180)

    def close(self) -> None:
        self.stack.down()
        self.db.dispose()


def lost_at(dep: Deployment, job_id: str, number: int = 1) -> float:
    rows = wait_for(
        lambda: [r for r in dep.attempts(job_id) if r[0] == number and r[2] == "lost"],
        120,
        "the attempt to be declared lost",
    )
    return stamp(rows[0][3])


def resumed_at(dep: Deployment, job_id: str, number: int) -> float:
    return float(
        wait_for(lambda: dep.run.first_step_at(job_id, number), 300, f"attempt {number}'s step")
    )


def attempts_used(dep: Deployment, job_id: str) -> str:
    job = dep.client.job(job_id)
    return f"{job['attempt']} (restarts {job['restarts']})"


def kill_node(dep: Deployment) -> Result:
    job_id = str(dep.client.create_job(spec(dep.dataset_id))["id"])
    dep.training(job_id, CHECKPOINT_EVERY + 5)
    fault = time.time()
    dep.stack.stop(dep.node, signal.SIGKILL)
    dep.node = dep.start_node()
    detect = lost_at(dep, job_id) - fault
    resume = resumed_at(dep, job_id, 2) - fault
    repeated = dep.run.repeated(job_id, 1, 2)
    used = attempts_used(dep, job_id)
    dep.stop_job(job_id)
    return Result(
        "1 kill -9 node worker",
        detect,
        resume,
        repeated,
        used,
        f"resumed from step {dep.run.start_step(job_id, 2)}",
    )


def kill_gang_node(dep: Deployment) -> Result:
    victim = dep.start_node(slots=1)
    job_id = str(dep.client.create_job(spec(dep.dataset_id, nodes=2))["id"])
    dep.training(job_id, CHECKPOINT_EVERY + 5)
    fault = time.time()
    dep.stack.stop(victim, signal.SIGKILL)
    replacement = dep.start_node(slots=1)
    detect = lost_at(dep, job_id) - fault
    resume = resumed_at(dep, job_id, 2) - fault
    repeated = dep.run.repeated(job_id, 1, 2)
    used = attempts_used(dep, job_id)
    dep.stop_job(job_id)
    dep.stack.stop(replacement)
    return Result(
        "1b kill -9 one node of a 2-node job",
        detect,
        resume,
        repeated,
        used,
        f"node {victim} killed; resumed from step {dep.run.start_step(job_id, 2)}",
    )


def api_down(dep: Deployment, outage: float) -> Result:
    job_id = str(dep.client.create_job(spec(dep.dataset_id, checkpoint_interval=1000))["id"])
    wait_for(lambda: dep.run.last_step(job_id, 1) >= 3, 300, "the job to train", interval=0.1)
    dep.stack.stop("api", signal.SIGKILL)
    before = dep.run.last_step(job_id, 1)
    time.sleep(outage)
    during = dep.run.last_step(job_id, 1) - before
    dep.stack.start("api", "api", "--port", str(dep.stack.port))
    dep.stack.wait_ready(node=False)
    back = time.time()
    target = dep.run.last_step(job_id, 1)
    wait_for(lambda: dep.client.job(job_id)["progress"]["step"] >= target, 120, "the replay")
    replayed = time.time() - back
    time.sleep(NODE_TIMEOUT_S + 1)
    lost = [r for r in dep.attempts(job_id) if r[2] != "running"]
    used = attempts_used(dep, job_id)
    dep.stop_job(job_id)
    stored = [p["step"] for p in dep.client.metrics(job_id)["loss"]]
    trained = [int(e["step"]) for e in dep.run.steps(job_id, 1)]
    exact = "every step stored once" if stored == trained else "**stored steps differ**"
    return Result(
        f"2 API down {outage:.0f} s",
        None,
        replayed,
        len(stored) - len(set(stored)),
        used,
        f"{during} steps trained during the outage; {'no' if not lost else len(lost)} attempt "
        f"lost; reports replayed {replayed:.1f} s after the API came back; {exact}",
    )


def redis_restart(dep: Deployment, queued: int) -> Result:
    running = [
        str(
            dep.client.create_job(spec(dep.dataset_id, max_steps=60, checkpoint_interval=1000))[
                "id"
            ]
        )
        for _ in range(2)
    ]
    wait_for(lambda: all(dep.run.last_step(j, 1) >= 1 for j in running), 300, "two jobs to run")
    waiting = [
        str(
            dep.client.create_job(spec(dep.dataset_id, max_steps=2, checkpoint_interval=1000))["id"]
        )
        for _ in range(queued)
    ]
    fault = time.time()
    dep.broker.kill()
    placed = wait_for(
        lambda: dep.sql(
            "SELECT job_id FROM attempts WHERE status = 'starting' AND outbox IS NOT NULL"
        ),
        600,
        "a job placed while the broker is down",
    )
    dep.broker.start()
    back = time.time()
    first = str(placed[0][0])
    resume = resumed_at(dep, first, 1) - back
    for job_id in [*running, *waiting]:
        dep.client.wait_job(job_id, timeout=900)
    drained = time.time() - back
    jobs = [dep.client.job(j) for j in [*running, *waiting]]
    ok = sum(j["status"] == "succeeded" for j in jobs)
    once = sum(
        len([e for e in dep.run.lines(j["id"], 1) if e["type"] == "start"]) == 1
        and j["attempt"] == 1
        for j in jobs
    )
    return Result(
        f"3 Redis restarted empty, 2 running + {queued} queued",
        None,
        resume,
        0,
        f"{sum(j['attempt'] for j in jobs)} for {len(jobs)} jobs",
        f"Redis away {back - fault:.1f} s; {ok}/{len(jobs)} succeeded, {once} ran exactly once "
        f"on attempt 1; queue drained {drained:.0f} s after Redis came back; resume is Redis "
        "back to the first step of a job placed while it was away",
    )


def kill_leader(dep: Deployment) -> Result:
    job_id = str(dep.client.create_job(spec(dep.dataset_id, checkpoint_interval=1000))["id"])
    wait_for(lambda: dep.run.last_step(job_id, 1) >= 3, 300, "the job to train", interval=0.1)
    dep.stack.start("control-2", "control")

    def holder() -> tuple[str, int] | None:
        rows = dep.sql("SELECT holder, epoch FROM leases WHERE name = 'control'")
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    current = wait_for(holder, 30, "a control leader")
    pids = {name: proc.pid for name, proc in dep.stack.procs.items() if name.startswith("control")}
    time.sleep(5.0)  # the second process has started and polls the lease
    leader = next(n for n, pid in pids.items() if current[0].endswith(f":{pid}"))
    fault = time.time()
    dep.stack.stop(leader, signal.SIGKILL)
    new = wait_for(lambda: (h := holder()) and h[0] != current[0] and h, 60, "a new leader")
    detect = time.time() - fault
    # The new leader goes on: a job submitted now is placed and trains.
    short = str(dep.client.create_job(spec(dep.dataset_id, max_steps=2))["id"])
    placed = dep.client.wait_job(short, timeout=300)
    used = attempts_used(dep, job_id)
    dep.stop_job(job_id)
    return Result(
        "5 kill -9 control leader",
        detect,
        None,
        0,
        used,
        f"epoch {current[1]} -> {new[1]}; lease {max(5.0, 10 * 0.2):.0f} s; the running job kept "
        f"its attempt; a job submitted after the kill {placed['status']}",
    )


def kill_prep(dep: Deployment, workdir: Path) -> Result:
    path = workdir / "bpe.txt"
    pseudo_corpus(path, 20, seed=1)  # tokenizing takes seconds even on an idle machine
    ds = dep.client.wait_dataset(str(dep.client.upload_dataset(path)["id"]), timeout=300)
    job_spec = spec(str(ds["id"]), max_steps=2)
    job_spec["tokenizer"] = {"type": "bpe", "vocab_size": 1000}
    job_id = str(dep.client.create_job(job_spec)["id"])

    def tokenizing() -> Any:
        rows = dep.sql(
            "SELECT id, claimed_at FROM prep_claims WHERE dataset_id = :d AND kind = 'tokens' "
            "AND status = 'active'",
            d=ds["id"],
        )
        return rows[0] if rows else None

    first = wait_for(tokenizing, 300, "the prep worker to tokenize")
    time.sleep(1.0)  # well into it
    assert tokenizing() == first, "the tokenization ended before the kill"
    fault = time.time()
    dep.stack.stop("prep", signal.SIGKILL)
    dep.stack.start("prep", "worker", "prep", "--loglevel", "INFO")
    taken = wait_for(
        lambda: dep.sql(
            "SELECT claimed_at FROM prep_claims WHERE dataset_id = :d AND kind = 'tokens' "
            "AND id > :i",
            d=ds["id"],
            i=first[0],
        ),
        300,
        "the takeover",
    )
    prepared = wait_for(
        lambda: dep.sql(
            "SELECT created_at FROM events WHERE job_id = :j AND type = 'prepared'", j=job_id
        ),
        300,
        "the job to be prepared",
    )
    claims = dep.sql(
        "SELECT status FROM prep_claims WHERE dataset_id = :d AND kind = 'tokens' ORDER BY id",
        d=ds["id"],
    )
    dep.client.wait_job(job_id, timeout=300)
    deliveries = dep.sql("SELECT prep_deliveries FROM jobs WHERE id = :j", j=job_id)[0][0]
    return Result(
        "6 kill -9 prep worker mid-tokenization",
        stamp(taken[0][0]) - fault,
        stamp(prepared[0][0]) - fault,
        None,
        f"{deliveries} deliveries",
        f"claims {[c[0] for c in claims]}; {fault - stamp(first[1]):.1f} s of tokenization lost; "
        "resume is the kill to the job prepared",
    )


def sigterm_node(dep: Deployment) -> Result:
    job_id = str(dep.client.create_job(spec(dep.dataset_id, checkpoint_interval=1000))["id"])
    wait_for(lambda: dep.run.last_step(job_id, 1) >= 5, 300, "the job to train", interval=0.1)
    fault = time.time()
    dep.stack.stop(dep.node, signal.SIGTERM, timeout=60)
    stopped = time.time() - fault
    dep.node = dep.start_node()
    row = next(r for r in dep.attempts(job_id) if r[0] == 1)
    resume = resumed_at(dep, job_id, 2) - fault
    repeated = dep.run.repeated(job_id, 1, 2)
    used = attempts_used(dep, job_id)
    dep.stop_job(job_id)
    return Result(
        "7 SIGTERM node worker",
        stamp(row[3]) - fault,
        resume,
        repeated,
        used,
        f"attempt 1 {row[2]}; the node worker exited {stopped:.1f} s after SIGTERM, its job "
        "checkpointed",
    )


def embedded(workdir: Path) -> Result:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        PYTHONPATH=str(ROOT),
        TRAINYARD_DATA_DIR=str(workdir / "data"),
        TRAINYARD_NODE_SLOTS="1",
        TRAINYARD_NODE_TIMEOUT_SECONDS=str(NODE_TIMEOUT_S),
        TRAINYARD_HEARTBEAT_SECONDS="1",
    )
    log = (workdir / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "trainyard.cli", "up", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def node_pid() -> int | None:
            for pid in children(up.pid):
                with contextlib.suppress(OSError):
                    if b"worker\0node" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return pid
            return None

        # Found by its command line before Celery renames the process.
        first = wait_for(node_pid, 180, "the embedded node worker", interval=0.05)
        known = set(children(up.pid))
        key = (
            subprocess.run(
                [sys.executable, "-m", "trainyard.cli", "keys", "create", "--project", "faults"],
                env=env,
                cwd=workdir,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )

        wait_http(url + "/readyz", timeout=180)
        client = Client(url, key)
        path = workdir / "corpus.txt"
        path.write_text(corpus(lines=1500))
        ds = client.wait_dataset(str(client.upload_dataset(path)["id"]), timeout=300)
        job_id = str(client.create_job(spec(str(ds["id"])))["id"])
        run = Run(workdir / "data" / "storage")

        def trained() -> bool:
            return run.last_step(job_id, 1) >= CHECKPOINT_EVERY + 5 and run.checkpointed(job_id)

        wait_for(trained, 300, "the job to train", interval=0.1)
        fault = time.time()
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: set(children(up.pid)) - known, 120, "the node worker's restart", interval=0.1
        )
        restarted = time.time() - fault

        def lost() -> float | None:
            for e in client.events(job_id, limit=1000)["data"]:
                if e["type"] == "status" and "attempt 1 lost" in (e.get("message") or ""):
                    return stamp(e["created_at"])
            return None

        detect = wait_for(lost, 120, "the attempt to be declared lost", interval=0.2) - fault
        resume = float(wait_for(lambda: run.first_step_at(job_id, 2), 300, "attempt 2")) - fault
        repeated = run.repeated(job_id, 1, 2)
        job = client.job(job_id)
        used = f"{job['attempt']} (restarts {job['restarts']})"
        client.cancel_job(job_id)
        client.wait_job(job_id, timeout=180)
        return Result(
            "8 trainyard up, kill -9 its node worker",
            detect,
            resume,
            repeated,
            used,
            f"node worker restarted by `up` after {restarted:.1f} s; resumed from step "
            f"{run.start_step(job_id, 2)}",
        )
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()


def table(results: list[Result]) -> str:
    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    lines = [
        "| scenario | time to detect | time to resume | steps repeated | attempts used | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        cells = [
            r.scenario,
            sec(r.detect),
            sec(r.resume),
            "-" if r.repeated is None else str(r.repeated),
            r.attempts,
            r.note,
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated scenarios (default: 1,1b,2,3,5,6,7,8)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the API is down")
    ap.add_argument("--queued", type=int, default=20, help="jobs waiting while Redis restarts")
    ap.add_argument("--results", type=Path, help="RESULTS.md to write the table into")
    args = ap.parse_args(argv)
    wanted = (args.only or "1,1b,2,3,5,6,7,8").split(",")
    started = datetime.now(UTC)
    loads = [load()]
    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix="trainyard-faults-"))
    try:
        shared = [s for s in wanted if s != "8"]
        if shared:
            database = Database()
            broker = ThrowawayRedis(workdir)
            broker.start()
            dep = None
            try:
                dep = Deployment(workdir / "stack", database, broker)
                plan: dict[str, Callable[[], Result]] = {
                    "6": lambda: kill_prep(dep, workdir),
                    "5": lambda: kill_leader(dep),
                    "7": lambda: sigterm_node(dep),
                    "1": lambda: kill_node(dep),
                    "1b": lambda: kill_gang_node(dep),
                    "2": lambda: api_down(dep, args.outage),
                    "3": lambda: redis_restart(dep, args.queued),
                }
                for name, scenario in plan.items():
                    if name in shared:
                        print(f"scenario {name} ...", flush=True)
                        results.append(scenario())
                        loads.append(load())
                        print(table(results[-1:]), flush=True)
            finally:
                if dep is not None:
                    dep.close()
                broker.kill()
                database.close()
        if "8" in wanted:
            print("scenario 8 ...", flush=True)
            (workdir / "up").mkdir()
            results.append(embedded(workdir / "up"))
            loads.append(load())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    order = {"1": 0, "1b": 1, "2": 2, "3": 3, "5": 4, "6": 5, "7": 6, "8": 7}
    results.sort(key=lambda r: order.get(r.scenario.split()[0], 9))
    only = f" --only {args.only}" if args.only else ""
    text = (
        f"### {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"- Machine: {machine()}; PostgreSQL and Redis on the same machine. Load average "
        f"(1, 5, 15 min) at the start and after each scenario: {'; '.join(loads)}.\n"
        f"- `cd bench && ../.venv/bin/python faults.py{only}`: node timeout {NODE_TIMEOUT_S} s, "
        "heartbeats every 1 s, prep claims taken over "
        f"after {CLAIM_S} s, checkpoints every {CHECKPOINT_EVERY} steps, tiny model on CPU, "
        "one process per node.\n\n" + table(results)
    )
    print(text)
    if args.results:
        replace_section(args.results, text, MARK_BEGIN, MARK_END, "## Faults (`bench/faults.py`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
