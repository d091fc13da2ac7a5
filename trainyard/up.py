"""`trainyard up`: the whole platform on one machine, stopped cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from trainyard.settings import get_settings

STOP_GRACE_S = 30.0
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0  # a child up this long has its backoff reset


class Supervisor:
    """Starts child processes in their own sessions, restarts one that dies (with backoff,
    as a service manager would), and stops them in reverse order."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.args: dict[str, tuple[str, ...]] = {}
        self.started: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.due: dict[str, float] = {}  # name -> when to restart it

    def start(self, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "trainyard.cli", *args]
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        self.children = [(n, p) for n, p in self.children if n != name] + [(name, proc)]
        self.args[name], self.started[name] = args, time.monotonic()

    def watch(self) -> None:
        """Schedule a restart for each child that exited, and restart those that are due."""
        now = time.monotonic()
        for name, proc in self.children:
            if proc.poll() is None or name in self.due:
                continue
            if now - self.started[name] > STABLE_S:
                self.failures[name] = 0
            tries = self.failures.get(name, 0)
            delay = BACKOFF_S[min(tries, len(BACKOFF_S) - 1)]
            self.failures[name] = tries + 1
            self.due[name] = now + delay
            print(
                f"trainyard: the {name} process exited with code {proc.returncode}; "
                f"restarting it in {delay:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        for name, when in list(self.due.items()):
            if when <= now:
                del self.due[name]
                self.start(name, *self.args[name])

    def stop(self) -> None:
        """SIGTERM every child, last started first; SIGKILL what outlives the grace period."""
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, proc in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def up(host: str, port: int) -> int:
    """Migrate, then run the API, the control loop, a prep worker and a node worker; a
    process that dies is restarted, and the platform stays up."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from domain import migrate

    migrate.upgrade()
    env = {
        **os.environ,
        "TRAINYARD_DATA_DIR": str(settings.data_dir.resolve()),
        "TRAINYARD_API_URL": f"http://{host}:{port}",
        "TRAINYARD_NODE_SECRET": settings.resolved_node_secret,
    }
    supervisor = Supervisor(env)
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    supervisor.start("api", "api", "--host", host, "--port", str(port))
    supervisor.start("control", "control")
    supervisor.start("prep", "worker", "prep")
    supervisor.start("node", "worker", "node")
    print(
        f"trainyard is up: http://{host}:{port} (data in {settings.data_dir.resolve()})", flush=True
    )
    print("Create a key: trainyard keys create --project NAME   Stop: Ctrl-C", flush=True)
    while not stop.wait(0.5):
        supervisor.watch()
    supervisor.stop()
    return 0
