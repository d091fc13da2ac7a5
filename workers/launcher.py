"""Start torchrun in its own process group, follow events.jsonl, stop it on cancel."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from workers.forkserver import ForkedGroup

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# Resolved once here: the child between fork and exec must not load libraries.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


# Rounds an idle OpenMP thread spins before it sleeps, in trainer ranks (see trainer_env).
OPENMP_SPINS = 10_000


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere), so a node
    worker killed with -9 takes torchrun, and torchrun its trainers, with it."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def trainer_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment trainer ranks run in: `env`, with defaults it does not set."""
    # How OpenMP threads wait between operators sets a CPU rank's speed (bench/omp_wait.py).
    # GNU OpenMP's default, 300,000 spins, makes a shared or busy CPU crawl (a step of the
    # tiny model 20 to 30 times slower at load 14 on 2 cores); never spinning
    # (OMP_WAIT_POLICY=PASSIVE) made a two-thread rank half as fast on an idle 2-core AMD
    # EPYC, every operator waiting for a sleeping thread to wake. A short spin keeps most of
    # the idle speed and little of the crawl. A node that sets either variable keeps its
    # choice. MKL's strict reproducibility mode makes a CPU rank's matrix products
    # independent of where its buffers happen to be aligned, so the same job gives the same
    # numbers on any layout of processes and nodes.
    defaults = {"MKL_CBWR": "AUTO,STRICT"}
    if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & env.keys():
        defaults["GOMP_SPINCOUNT"] = str(OPENMP_SPINS)
    return {**defaults, **env, "PYTHONUNBUFFERED": "1"}


class EventFollower:
    """Reads complete new lines of a growing events.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        """Events appended since the last call (a half-written last line waits)."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    events.append({"type": "log", "message": "unreadable event line"})
        return events


def rendezvous_args(nnodes: int, node_rank: int, master: tuple[str, int] | None) -> list[str]:
    """torchrun's rendezvous flags: standalone on one node; for a gang, a static rendezvous
    at rank 0's address and port with no restarts (the platform restarts the whole gang)."""
    if nnodes == 1 or master is None:
        return ["--nnodes", "1", "--standalone"]
    addr, port = master
    return [
        "--nnodes",
        str(nnodes),
        "--node-rank",
        str(node_rank),
        "--rdzv-backend",
        "static",
        "--master-addr",
        addr,
        "--master-port",
        str(port),
        "--max-restarts",
        "0",
    ]


def trainer_environ() -> dict[str, str]:
    """This process's environment less the platform's settings: the trainer runs the
    user's job and needs none of them, and they hold the node secret and the broker's
    password."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}


class Launch:
    """One process group for one attempt (one node of its gang) on this node: ranks forked
    from the warm fork server for a one-node job (unless `warm` is off, or the server cannot
    be reached), else torchrun."""

    def __init__(
        self,
        run_config: Path,
        nproc: int,
        env: dict[str, str] | None = None,
        *,
        nnodes: int = 1,
        node_rank: int = 0,
        master: tuple[str, int] | None = None,
        warm: bool = True,
    ) -> None:
        self.run_config = run_config
        self.folder = run_config.parent
        # Every node of a gang writes into the same shared attempt folder: one log each.
        suffix = f"-node{node_rank}" if node_rank else ""
        self.log_path = self.folder / f"train{suffix}.log"
        child_env = trainer_env({**trainer_environ(), **(env or {})})
        self.log: BinaryIO = self.log_path.open("ab")
        # A gang always starts under torchrun: its rendezvous spans hosts.
        forked = self._fork(nproc, child_env) if warm and nnodes == 1 else None
        self.proc: subprocess.Popen[bytes] | ForkedGroup = forked or self._torchrun(
            nproc, child_env, nnodes, node_rank, master, suffix
        )
        self.events = EventFollower(self.folder / "events.jsonl")

    def _fork(self, nproc: int, env: dict[str, str]) -> ForkedGroup | None:
        """One node: fork the ranks from the warm process that has imported torch; None
        if it cannot be reached (the ranks then start under torchrun)."""
        from workers import forkserver

        try:
            return forkserver.get().launch(
                self.run_config, nproc, env=env, cwd=self.folder, log=self.log_path
            )
        except OSError as exc:
            log.warning("fork server unreachable (%s); starting under torchrun", exc)
            return None

    def _torchrun(
        self,
        nproc: int,
        env: dict[str, str],
        nnodes: int,
        node_rank: int,
        master: tuple[str, int] | None,
        suffix: str,
    ) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *rendezvous_args(nnodes, node_rank, master),
            "--nproc_per_node",
            str(nproc),
            "--log-dir",
            str(self.folder / f"logs{suffix}"),
            "--tee",
            "3",
            "-m",
            "trainer.train",
            "--config",
            str(self.run_config),
        ]
        # A new session makes torchrun and its workers one process group we can signal.
        return subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(self.folder),
            preexec_fn=die_with_parent,
        )

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return self.proc.poll()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the group (the trainer checkpoints), SIGKILL after the grace period."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        code = self.proc.wait()
        self._signal(signal.SIGKILL)  # anything that outlived torchrun in the group
        return code

    def close(self) -> None:
        """Make sure nothing of the group is left, and close the log."""
        self._signal(signal.SIGKILL)
        self.log.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the combined torchrun log."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - 64 * 1024))
                tail = deque(f.read().decode("utf-8", "replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return "\n".join(tail)
