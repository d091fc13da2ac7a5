"""Shared helpers for the benchmarks: a Stack on a fresh database, load checks, a corpus."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import corpus, pseudo_corpus  # noqa: E402
from tests.stack import Database, Stack  # noqa: E402

__all__ = ["corpus", "pseudo_corpus"]


def load() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_busy(seconds: float = 1.0) -> float:
    """The fraction of all CPU time that was busy over the next `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_busy: float = 0.25, timeout: float = 60.0) -> str:
    """Wait (bounded) until the machine is mostly idle; the load average and busy share seen."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy()
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy(2.0)
    return f"load {load()}, cpu busy {busy:.0%}"


@contextlib.contextmanager
def running_stack(
    *, node: bool = True, extra_env: dict[str, str] | None = None, node_slots: int = 2
) -> Iterator[Stack]:
    """A Stack on a throwaway database, torn down (processes, database, folder) on exit."""
    db = Database()
    workdir = Path(tempfile.mkdtemp(prefix="trainyard-bench-"))
    stack = Stack(workdir, db.url, extra_env=extra_env, node_slots=node_slots)
    try:
        stack.up(node=node)
        yield stack
    finally:
        stack.down()
        db.close()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Block until `url` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer")


def children(pid: int) -> list[int]:
    """Direct child process ids of a process (from /proc)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def machine() -> str:
    """CPU model, cores and memory of this machine."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return f"{os.cpu_count()} cores, {model}, {mem:.0f} GB RAM, Python {sys.version.split()[0]}"


def free_port_url() -> str:
    """An http://127.0.0.1:PORT base URL on a free port."""
    from trainyard.net import free_port

    return f"http://127.0.0.1:{free_port()}"


def tiny_spec(dataset_id: str, processes: int = 1, max_steps: int = 20) -> dict[str, object]:
    """A tiny CPU pretraining job."""
    return {
        "dataset_id": dataset_id,
        "model": {"preset": "tiny"},
        "training": {
            "max_steps": max_steps,
            "seq_len": 32,
            "batch_size": 8,
            "warmup_steps": 2,
            "eval_interval": max_steps,
            "eval_batches": 2,
            "checkpoint_interval": max_steps,
        },
        "resources": {"processes_per_node": processes, "accelerator": "cpu"},
    }


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each of these processes that still runs."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    return sum(cpu_by_pid(pids).values())


def cpu_used(before: dict[int, float]) -> float:
    """CPU seconds used since `before` by the processes of `before` still running."""
    after = cpu_by_pid(list(before))
    return sum(after[pid] - before[pid] for pid in after)


def pids_named(name: str) -> list[int]:
    """Ids of the processes whose command name is `name`."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
    return out
