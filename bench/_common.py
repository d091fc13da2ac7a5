"""Shared helpers for the benchmarks: a Stack on a fresh database, load checks, a corpus."""

from __future__ import annotations

import contextlib
import os
import random
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

from tests.stack import Database, Stack  # noqa: E402

WORDS = (
    "the a king queen ship river north wind sails over under bright dark old young castle "
    "walls sing songs of winter and summer light falls on quiet fields"
).split()


def load() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def wait_quiet(limit: float = 0.8, timeout: float = 60.0) -> str:
    """Wait (bounded) until the 1-minute load drops under the limit; the load seen."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(2)
    return load()


def corpus(lines: int = 2000, seed: int = 0) -> str:
    """A small English-like corpus."""
    rng = random.Random(seed)
    return (
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(lines)
        )
        + "\n"
    )


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
    from tests.stack import free_port

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
