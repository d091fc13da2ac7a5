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


class Supervisor:
    """Starts child processes in their own sessions and stops them in reverse order."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "trainyard.cli", *args]
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        self.children.append((name, proc))

    def failed(self) -> str | None:
        """The name of a child that exited on its own, if any."""
        return next((n for n, p in self.children if p.poll() is not None), None)

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
    """Migrate, then run the API, the control loop, a prep worker and a node worker."""
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
    code = 0
    while not stop.wait(0.5):
        dead = supervisor.failed()
        if dead:
            print(f"trainyard: the {dead} process exited; stopping", file=sys.stderr)
            code = 1
            break
    supervisor.stop()
    return code
