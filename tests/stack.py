"""A real trainyard deployment for tests and benchmarks: a fresh PostgreSQL database, Redis,
uvicorn, the control loop, and real Celery prep and node worker processes."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from trainyard.net import free_port

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "TRAINYARD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TRAINYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """predicate()'s first truthy value, polled every `interval` seconds; TimeoutError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class Database:
    """A throwaway database on the PostgreSQL server, dropped on close."""

    def __init__(self, admin_url: str = POSTGRES_URL) -> None:
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.name = f"trainyard_test_{secrets.token_hex(4)}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = make_url(admin_url).set(database=self.name).render_as_string(hide_password=False)

    def close(self) -> None:
        """Drop the database (ending any connection still open)."""
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


class ThrowawayRedis:
    """A redis-server of the test's own, without persistence, that can be killed and started
    again empty on the same port (a broker restart that loses every message)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until it answers."""
        import redis

        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9: every message it held is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Stack:
    """The platform's processes, started from the CLI as an operator would."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        broker_url: str = REDIS_URL,
        node_slots: int = 2,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TRAINYARD_DATA_DIR": str(workdir / "data"),
            "TRAINYARD_DATABASE_URL": database_url,
            "TRAINYARD_BROKER_URL": broker_url,
            "TRAINYARD_STORAGE_ROOT": str(workdir / "storage"),
            "TRAINYARD_API_URL": self.url,
            "TRAINYARD_NODE_SECRET": secrets.token_urlsafe(16),
            "TRAINYARD_NODE_NAME": f"node-{secrets.token_hex(3)}",
            "TRAINYARD_NODE_SLOTS": str(node_slots),
            "TRAINYARD_QUEUE_PREFIX": f"t{secrets.token_hex(4)}.",
            "TRAINYARD_HEARTBEAT_SECONDS": "1",
            "TRAINYARD_CANCEL_GRACE_SECONDS": "5",
            "TRAINYARD_EXIT_GRACE_SECONDS": "10",
            "TRAINYARD_CONTROL_INTERVAL_SECONDS": "0.2",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def cli(self, *args: str) -> str:
        """Run a `trainyard` command against this deployment; its standard output."""
        out = subprocess.run(
            [sys.executable, "-m", "trainyard.cli", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode:
            raise RuntimeError(f"trainyard {' '.join(args)} failed:\n{out.stderr}")
        return out.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        """Start one platform process in its own process group (`env`: settings of its
        own over the stack's)."""
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "trainyard.cli", *args],
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def up(self, *, node: bool = True) -> Stack:
        """Migrate, start everything, and wait until the node has registered."""
        self.cli("db", "upgrade")
        self.start("api", "api", "--port", str(self.port))
        self.start("control", "control")
        self.start("prep", "worker", "prep", "--loglevel", "INFO")
        if node:
            self.start("node", "worker", "node", "--loglevel", "INFO")
        self.wait_ready(node=node)
        return self

    def wait_ready(self, node: bool, timeout: float = 90.0, url: str | None = None) -> None:
        """Block until the API (at `url`, default this stack's) answers and, if asked, a
        node is online."""
        from sqlalchemy import create_engine as engine_for

        url = url or self.url
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited; see {self.logs}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    if not node:
                        return
                    engine = engine_for(self.env["TRAINYARD_DATABASE_URL"])
                    with engine.connect() as conn:
                        online = conn.execute(
                            text("SELECT count(*) FROM nodes WHERE status = 'online'")
                        ).scalar()
                    engine.dispose()
                    if online:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the stack did not come up; see {self.logs}")

    def new_key(self, project: str) -> str:
        """A new API key for a project (the last line of `trainyard keys create`)."""
        return self.cli("keys", "create", "--project", project).strip().splitlines()[-1]

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop one process group."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def down(self) -> None:
        """Stop every process, node first so its trainers are stopped too."""
        for name in ("node", "prep", "control", "api", *list(self.procs)):
            self.stop(name)

    def log(self, name: str) -> str:
        """One process's log so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: Any) -> None:
        self.down()
