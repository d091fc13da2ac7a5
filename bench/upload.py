"""Upload: a 1 GiB text dataset through `POST /v1/datasets` (multipart), streamed from disk.

Client: curl -F file=@path (C, streams the file from disk). Server: the Stack's uvicorn with
a 2 GiB upload cap. The prep worker is stopped before the upload so validating 1 GiB does
not compete for the CPU. Targets: >= 200 MB/s, API memory growth <= 64 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import corpus, cpu_seconds, load, machine, running_stack, wait_quiet

from tests.stack import Stack
from trainyard.client import Client

TARGET_MB_S = 200.0
TARGET_GROWTH_MB = 64.0
MB = 1_000_000


def make_file(path: Path, size: int) -> str:
    """Write a text file of exactly `size` bytes (repeated corpus lines); its sha256."""
    block = corpus(lines=20000, seed=1).encode()
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = block[:left]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every 20 ms; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        """Sample until told to stop."""
        while not self.done.is_set():
            self.peak = max(self.peak, memory_kb(self.pid)["VmRSS"])
            time.sleep(0.02)


def curl_upload(url: str, key: str, path: Path) -> tuple[int, dict[str, object], float]:
    """POST the file with curl; HTTP status, the JSON answer, curl's own CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.NamedTemporaryFile(suffix=".json") as body:
        out = subprocess.run(
            [
                "curl", "-sS", "-o", body.name, "-w", "%{http_code}",
                "-H", f"Authorization: Bearer {key}",
                "-F", f"file=@{path};type=text/plain", "-F", "name=bench-1gib",
                f"{url}/v1/datasets",
            ],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        answer = json.loads(Path(body.name).read_text() or "{}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(out.stdout.strip()), answer, cpu


def one_upload(stack: Stack, key: str, path: Path, size: int, sha: str) -> dict[str, Any]:
    """Upload once from a clean page-cache state; rate, memory and CPU, then delete it."""
    os.sync()  # start with no dirty pages of earlier writes queued for the disk
    pid = stack.procs["api"].pid
    seen = wait_quiet()
    mem0 = memory_kb(pid)
    cpu0 = cpu_seconds([pid])
    sampler = RssSampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    status, answer, curl_cpu = curl_upload(stack.url, key, path)
    elapsed = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    api_cpu = cpu_seconds([pid]) - cpu0
    mem1 = memory_kb(pid)
    assert status == 201, (status, answer)
    assert answer["sha256"] == sha and answer["bytes"] == size, answer
    with Client(stack.url, key) as client:
        client.request("DELETE", f"/v1/datasets/{answer['id']}")
    return {
        "rate": size / MB / elapsed,
        "elapsed": elapsed,
        "rss0": mem0["VmRSS"] / 1000,
        "rss1": mem1["VmRSS"] / 1000,
        "growth": (max(mem1["VmHWM"], sampler.peak) - mem0["VmRSS"]) / 1000,
        "api_cpu": api_cpu,
        "curl_cpu": curl_cpu,
        "before": seen,
    }


def main() -> None:
    """Start a Stack with a 2 GiB cap, upload a 1 GiB file a few times, print results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="trainyard-upload-"))
    path = tmp / "big.txt"
    runs: list[dict[str, Any]] = []
    try:
        sha = make_file(path, size)
        env = {"TRAINYARD_MAX_UPLOAD_BYTES": str(2 * 1024**3)}
        with running_stack(node=False, extra_env=env) as stack:
            stack.stop("prep")
            key = stack.new_key("bench-upload")
            for _ in range(args.repeat):
                runs.append(one_upload(stack, key, path, size, sha))
                print(f"{runs[-1]['rate']:.0f} MB/s", flush=True)
    finally:
        path.unlink(missing_ok=True)
        tmp.rmdir()
    print("\n== upload: POST /v1/datasets, curl -F file=@big.txt (streamed from disk) ==")
    print(f"machine: {machine()}; load at end: {load()}")
    print(f"target: >= {TARGET_MB_S:.0f} MB/s, API memory growth <= {TARGET_GROWTH_MB:.0f} MB")
    print(f"file: {size} bytes ({args.mib} MiB); sha256 and size verified in every answer")
    for r in runs:
        print(
            f"{r['rate']:4.0f} MB/s in {r['elapsed']:5.2f} s  "
            f"{'MEETS' if r['rate'] >= TARGET_MB_S else 'short'} | API RSS "
            f"{r['rss0']:.1f} -> {r['rss1']:.1f} MB, peak growth +{r['growth']:.1f} MB  "
            f"{'MEETS' if r['growth'] <= TARGET_GROWTH_MB else 'short'} | CPU API "
            f"{r['api_cpu']:.2f} s ({r['api_cpu'] / r['elapsed']:.0%} of a core), curl "
            f"{r['curl_cpu']:.2f} s  [before: {r['before']}]"
        )
    rates = sorted(r["rate"] for r in runs)
    print(f"median {statistics.median(rates):.0f} MB/s, best {rates[-1]:.0f} MB/s")


if __name__ == "__main__":
    main()
