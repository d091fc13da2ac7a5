"""A warm process that starts a node's trainer ranks by fork.

torchrun imports torch, then every rank it starts imports torch and the trainer again: two
imports in series before the first step. The fork server imports them once, when the node
worker starts; a one-node job then forks its ranks from it, with the environment torchrun
would give them (static rendezvous on this host). Multi-node jobs still go through torchrun.

Per launch the server forks an *agent*: a new session (one process group the node worker
signals for cancel) that forks one process per rank, waits for them as torchrun's agent
does, and sends their outcome back over the launch's connection.

Lifetimes follow the node worker, never the server:
- the server runs in a session of its own and ignores SIGTERM and SIGINT, so a signal to
  the node worker's process group (a host shutting down) reaches the node worker alone,
  which stops its ranks (they checkpoint) before it exits; the server dies with the node
  worker (PR_SET_PDEATHSIG) and is started again by it if it dies before (`ForkServer`);
- an agent watches its connection to the node worker: when that closes (the node worker
  killed) it kills its ranks; a server that dies leaves agents and ranks running;
- ranks die with their agent (PR_SET_PDEATHSIG), as torchrun's workers do with torchrun.

Run as `python -m workers.forkserver NAME` (an abstract socket name); the node worker does
this itself.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from workers.launcher import die_with_parent, trainer_env, trainer_environ

log = logging.getLogger(__name__)

RANK_FAILURE_GRACE_S = 10.0  # after one rank fails, how long the others get to notice
RESTART_DELAY_S = 1.0  # between a server's death and its successor (no busy loop)
CONNECT_TIMEOUT_S = 30.0


def _title(text: str) -> None:
    """Name this process in `ps` (and `pgrep -f`): a fork keeps its parent's command line."""
    import setproctitle

    setproctitle.setproctitle(text)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _run_rank(request: dict[str, Any], local_rank: int, agent: int) -> None:
    """In a forked rank: take torchrun's environment, then run the trainer's entry point."""
    die_with_parent()
    if os.getppid() != agent:  # the agent died before the request took effect
        os._exit(1)
    nproc = int(request["nproc"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(request["master_port"]),
    )
    if nproc > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does
    _title(f"trainer.train --config {request['config']} (rank {local_rank})")
    code = 1
    try:
        from trainer.train import main

        code = main(["--config", request["config"]])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # As trainer.train does: skip finalization, where communication backends can hang.
        os._exit(code)


def _kill(pids: dict[int, int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _closed(conn: socket.socket) -> bool:
    """Whether the node worker's end of the connection has gone (it sends nothing after
    the request, so anything readable is its end)."""
    ready, _, _ = select.select([conn], [], [], 0)
    if not ready:
        return False
    try:
        return not conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return True


def _wait_ranks(pids: dict[int, int], conn: socket.socket) -> int:
    """Wait for every rank; the first failure's code (negative: killed by that signal).
    If the node worker goes, the ranks go too: nobody would report them."""
    first_failure: int | None = None
    deadline: float | None = None
    while pids:
        if deadline is not None and time.monotonic() > deadline:
            _kill(pids)
            deadline = None
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            if _closed(conn):
                _kill(pids)
                os._exit(1)
            time.sleep(0.05)
            continue
        if pid not in pids:
            continue
        del pids[pid]
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and first_failure is None:
            # As torchrun does, one failed rank ends the group: the others get a grace
            # period to fail on their own (a collective with a dead peer), then SIGKILL.
            first_failure = code
            deadline = time.monotonic() + RANK_FAILURE_GRACE_S
    return first_failure or 0


def _run_agent(conn: socket.socket, request: dict[str, Any]) -> None:
    """In the forked agent: a new process group, the ranks, then their outcome to the client.
    It outlives the server (no death signal from it) and dies with the node worker instead,
    whose end of `conn` closes then."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # SIGTERM to the group is for the ranks (checkpoint and exit); the agent stays to
    # report what they did. SIGKILL ends it like any other member.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _title(f"trainyard-launch --config {request['config']}")
    os.chdir(request["cwd"])
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    agent = os.getpid()
    pids: dict[int, int] = {}
    for local_rank in range(int(request["nproc"])):
        pid = os.fork()
        if pid == 0:
            conn.close()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _run_rank(request, local_rank, agent)
        pids[pid] = local_rank
    code = _wait_ranks(pids, conn)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
    os._exit(0)


def serve(name: str) -> None:
    """Listen on an abstract Unix socket and fork an agent per launch request, forever."""
    die_with_parent()
    # The node worker decides when training stops; the server goes when it goes.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(16)
    _title(f"trainyard-forkserver {name}")
    # Requests wait in the backlog while the heavy imports run, once.
    # torch._dynamo: torch's optimizers import it on construction (seconds, under load).
    for module in ("trainer.train", "torch._dynamo"):
        importlib.import_module(module)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # agents are reaped by the kernel
    while True:
        conn, _ = listener.accept()
        try:
            request = json.loads(_read_line(conn))
            pid = os.fork()
        except (OSError, ValueError):
            conn.close()
            continue
        if pid == 0:
            listener.close()
            try:
                _run_agent(conn, request)
            finally:
                os._exit(1)
        conn.close()


class ForkedGroup:
    """The ranks of one launch as the node worker sees them: a Popen-like handle whose
    pid is the agent's, which leads the process group. Nothing here blocks unless asked
    to: while the server still imports torch, the node worker keeps reporting."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.returncode: int | None = None
        self._pid: int | None = None
        self._buffer = b""

    @property
    def pid(self) -> int:
        """The agent's pid (the process group's id); waits for the agent to start."""
        while self._pid is None and self.returncode is None:
            self._read(timeout=None)
        if self._pid is None:
            raise ProcessLookupError("the ranks ended before they started")
        return self._pid

    def _read(self, timeout: float | None) -> bool:
        """Take in the agent's next message, if one comes within timeout."""
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([self.conn], [], [], timeout)
            if not ready:
                return False
            chunk = self.conn.recv(4096)
            if not chunk:  # the agent (or the server before it) died without a word
                self.returncode = -signal.SIGKILL
                self.conn.close()
                return True
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if "pid" in message:
            self._pid = int(message["pid"])
        if "exit" in message:
            self.returncode = int(message["exit"])
            self.conn.close()
        return True

    def poll(self) -> int | None:
        """The ranks' exit code, or None while they run."""
        while self.returncode is None and self._read(timeout=0):
            pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the ranks have ended; their exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("forked ranks", timeout or 0)
            self._read(left)
        return self.returncode


class ForkServer:
    """The node worker's handle on its fork server: started once, and started again by a
    thread of its own whenever it dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = threading.Event()
        self._keeper: threading.Thread | None = None
        # Linux's abstract socket namespace: nothing on disk to clean up after a kill -9.
        self.name = f"trainyard-forkserver-{os.getpid()}-{uuid.uuid4().hex}"
        self.starts = 0

    def start(self) -> None:
        """Start the keeper thread, which starts the server (it imports torch and the
        trainer in the background) and restarts it whenever it exits."""
        with self._lock:
            if self._keeper is None:
                # The death signal follows the thread that forked, not the process: the
                # keeper lives as long as the node worker, and the server with it.
                self._keeper = threading.Thread(target=self._keep, name="forkserver", daemon=True)
                self._keeper.start()
        self._started.wait()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.forkserver", self.name],
            stdin=subprocess.DEVNULL,
            # OpenMP reads its settings when torch loads it, here, once for all ranks.
            env=trainer_env(trainer_environ()),
            # Out of the node worker's process group: a SIGTERM to that group is the node
            # worker's to pass on to the ranks, once, in order.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def _keep(self) -> None:
        while True:
            proc = self._spawn()
            with self._lock:
                self._proc = proc
                self.starts += 1
            self._started.set()
            code = proc.wait()
            log.warning("fork server exited with %s; starting it again", code)
            time.sleep(RESTART_DELAY_S)

    @property
    def pid(self) -> int | None:
        """The server's pid now (None before its first start)."""
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def launch(
        self, config: Path, nproc: int, *, env: dict[str, str], cwd: Path, log: Path
    ) -> ForkedGroup:
        """Fork the ranks of a one-node job; a handle on their process group. Raises
        OSError if the server cannot be reached (the caller falls back to torchrun)."""
        from trainyard.net import free_port

        self.start()
        request = {
            "config": str(config),
            "nproc": nproc,
            "env": env,
            "cwd": str(cwd),
            "log": str(log),
            "master_port": free_port(),
        }
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:  # the socket appears as soon as the server process runs
            try:
                conn.connect("\0" + self.name)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.02)
        conn.sendall(json.dumps(request).encode() + b"\n")
        return ForkedGroup(conn)


_server: ForkServer | None = None
_server_lock = threading.Lock()


def get() -> ForkServer:
    """This process's fork server, started on first use (call it first from the main
    thread or any thread: the server's own keeper thread starts it)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = ForkServer()
            _server.start()
        return _server


if __name__ == "__main__":
    serve(sys.argv[1])
