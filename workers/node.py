"""The node worker: registers its host, heartbeats, and runs attempts under torchrun.

It holds no database credentials; everything goes through the API's internal endpoints.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from celery.signals import worker_init, worker_shutting_down
from pydantic import BaseModel

from trainyard.messaging import RUN_ATTEMPT, get_app
from trainyard.net import address_towards, free_port
from trainyard.settings import Settings, get_settings
from workers import forkserver
from workers.launcher import Launch
from workers.reporter import Conflict, Reporter

log = logging.getLogger(__name__)
app = get_app()


class AttemptPayload(BaseModel):
    attempt_id: str
    job_id: str
    attempt: int
    token: str
    run_config: str
    nproc: int
    nnodes: int = 1
    node_rank: int = 0


def detect_devices(settings: Settings) -> tuple[str, int, list[str], int | None]:
    """(accelerator, slots, device names, memory): GPUs through nvidia-smi (the memory of
    one GPU), else CPU slots (the host's RAM, which all of a job's processes share)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout
            rows = [line.rsplit(",", 1) for line in out.splitlines() if line.strip()]
            if rows:
                names = [name.strip() for name, _ in rows]
                memory = min(int(float(mib)) for _, mib in rows) * 1024 * 1024
                return "gpu", settings.node_slots or len(names), names, memory
        except (OSError, ValueError, subprocess.SubprocessError):
            log.warning("nvidia-smi failed; running as a CPU node")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "cpu", settings.node_slots or (os.cpu_count() or 1), [], ram


def node_queue(settings: Settings) -> str:
    """This node's own Celery queue."""
    return settings.queue(f"node.{settings.node_name}")


FINAL_EVENTS = ("done", "error", "preempted")
_shutting_down = threading.Event()
# Set once the agent has told the API this node is leaving (or tried): an attempt stopped by
# the shutdown reports its end after that, so it is never placed back on this node.
_left = threading.Event()
LEAVE_WAIT_S = 15.0


class Agent:
    """Keeps this node registered and alive in the API's eyes."""

    def __init__(self, settings: Settings, pool: str = "default") -> None:
        self.settings = settings
        self.pool = pool
        self.node_id: str | None = None
        self.stop = threading.Event()
        self.client = httpx.Client(
            base_url=settings.resolved_internal_url,
            headers={"Authorization": f"Bearer {settings.resolved_node_secret}"},
            timeout=10.0,
        )

    def _register(self) -> None:
        accelerator, slots, devices, memory = detect_devices(self.settings)
        body = {
            "name": self.settings.node_name,
            "host": socket.gethostname(),
            "queue": node_queue(self.settings),
            "pool": self.pool,
            "accelerator": accelerator,
            "slots": slots,
            "devices": devices,
            "memory_bytes": memory,
            "address": self.settings.node_address or address_towards(self.settings.api_url),
        }
        response = self.client.post("/internal/nodes", json=body)
        response.raise_for_status()
        self.node_id = response.json()["id"]
        log.info("registered node %s (%s, %d slots)", self.settings.node_name, accelerator, slots)

    def run(self) -> None:
        """Register, then heartbeat until stopped; re-register if the API forgot us. On a
        shutdown, tell the API to place nothing more here."""
        while not self.stop.is_set():
            if _shutting_down.is_set():
                try:
                    self._leave()
                finally:
                    _left.set()
                return
            try:
                if self.node_id is None:
                    self._register()
                else:
                    response = self.client.post(f"/internal/nodes/{self.node_id}/heartbeat")
                    if response.status_code == 404:
                        self.node_id = None
                        continue
                    response.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("API unreachable from node agent: %s", exc)
            # A shutdown wakes the agent at once: it leaves before the attempts end.
            _shutting_down.wait(self.settings.heartbeat_seconds)

    def _leave(self) -> None:
        if self.node_id is None:
            return
        try:
            self.client.post(f"/internal/nodes/{self.node_id}/leave").raise_for_status()
            log.info("node %s left: nothing more is placed here", self.settings.node_name)
        except httpx.HTTPError as exc:
            log.warning("could not tell the API this node is leaving: %s", exc)


@worker_init.connect
def _warm_fork_server(**_: Any) -> None:
    # It imports torch and the trainer now, not when the first job arrives.
    if get_settings().fork_server:
        forkserver.get()


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    # Celery waits for running tasks on a warm shutdown; make ours stop their trainers so
    # they checkpoint and the job resumes elsewhere instead of blocking the shutdown.
    _shutting_down.set()


def _stop(launch: Launch, reporter: Reporter, grace_s: float) -> int:
    """Stop the trainer (it checkpoints first) while reports keep the attempt's lease alive:
    a checkpoint that takes longer than the node timeout must not get it declared lost."""
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.wait(1.0):
            reporter.flush()

    thread = threading.Thread(target=beat, name="stop-heartbeat", daemon=True)
    thread.start()
    try:
        return launch.stop(grace_s)
    finally:
        stopped.set()
        thread.join()


def supervise(payload: AttemptPayload, settings: Settings) -> None:
    """Run one attempt to its end, forwarding events and enforcing cancel."""
    reporter = Reporter(settings.resolved_internal_url, payload.attempt_id, payload.token)
    gang = payload.nnodes > 1
    # Rank 0 of a gang hosts the rendezvous on a port it reserves now.
    port = free_port("0.0.0.0") if gang and payload.node_rank == 0 else None
    try:
        master = reporter.start(master_port=port)
    except Conflict as exc:
        log.info("attempt %s not started: %s", payload.attempt_id, exc)
        reporter.close()
        return
    launch = Launch(
        Path(payload.run_config),
        payload.nproc,
        nnodes=payload.nnodes,
        node_rank=payload.node_rank,
        master=master,
        warm=settings.fork_server,
    )

    def read_events() -> list[dict[str, Any]]:
        # Global rank 0, on node rank 0, writes the events; the other nodes only heartbeat.
        return launch.events.read() if payload.node_rank == 0 else []

    code: int | None = None
    reason = None
    last_report = 0.0
    ended: tuple[str, float] | None = None  # the trainer's last word, and when it came
    try:
        while True:
            code = launch.poll()
            new = read_events()
            reporter.add(new)
            now = time.monotonic()
            final = [e["type"] for e in new if e.get("type") in FINAL_EVENTS]
            if final and ended is None:
                ended = (final[-1], now)
            # Steps are batched once a second; milestones (start, eval, done, ...) go at once
            # so a user sees the job come alive without waiting for the next batch.
            milestone = any(e.get("type") != "step" for e in new) or (
                new and reporter.next_seq - len(new) <= 2
            )
            if milestone or now - last_report >= 1.0 or code is not None:
                reporter.flush()
                last_report = now
            if code is not None:
                break
            if ended is not None and now - ended[1] > settings.exit_grace_seconds:
                # The trainer said it is done but its processes linger (a collective or a
                # native destructor that never returns): stop them; the event decides.
                log.warning(
                    "attempt %s: trainer lingers after %r; stopping it",
                    payload.attempt_id,
                    ended[0],
                )
                _stop(launch, reporter, settings.cancel_grace_seconds)
                code = 0 if ended[0] == "done" else 1
                break
            if reporter.cancel or _shutting_down.is_set():
                reason = "cancelled" if reporter.cancel else "node worker shutting down"
                log.info("stopping attempt %s: %s", payload.attempt_id, reason)
                code = _stop(launch, reporter, settings.cancel_grace_seconds)
                break
            time.sleep(0.2)
        reporter.add(read_events())
    except BaseException as exc:  # worker shutdown: stop training, report, re-raise
        code = _stop(launch, reporter, settings.cancel_grace_seconds)
        reason = f"node worker stopped: {type(exc).__name__}"
        raise
    finally:
        launch.close()
        if _shutting_down.is_set() and reason != "cancelled":
            _left.wait(LEAVE_WAIT_S)
        reporter.finish(
            code, launch.log_tail(), reason, preempted=reason is not None and reason != "cancelled"
        )
        reporter.close()


@app.task(name=RUN_ATTEMPT, acks_late=False)
def run_attempt(payload: dict[str, Any]) -> None:
    """Run one node of one job attempt; the database (through the API) decides if it may."""
    supervise(AttemptPayload.model_validate(payload), get_settings())
