"""Upload: a 1 GiB text dataset through `POST /v1/datasets` (multipart), streamed from disk.

Client: curl -F file=@path (C, streams the file from disk). Server: the Stack's uvicorn with
a 2 GiB upload cap. The prep worker is stopped before the upload so validating 1 GiB does
not compete for the CPU. Targets: >= 200 MB/s, API memory growth <= 64 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import corpus, cpu_seconds, load, machine, running_stack, wait_quiet

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


def main() -> None:
    """Start a Stack with a 2 GiB cap, upload a 1 GiB file once, print results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="trainyard-upload-"))
    path = tmp / "big.txt"
    try:
        sha = make_file(path, size)
        env = {"TRAINYARD_MAX_UPLOAD_BYTES": str(2 * 1024**3)}
        with running_stack(node=False, extra_env=env) as stack:
            stack.stop("prep")
            key = stack.new_key("bench-upload")
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
    finally:
        path.unlink(missing_ok=True)
        tmp.rmdir()
    assert status == 201, (status, answer)
    assert answer["sha256"] == sha and answer["bytes"] == size, answer
    rate = size / MB / elapsed
    growth_rss = (mem1["VmRSS"] - mem0["VmRSS"]) / 1000
    growth_peak = (max(mem1["VmHWM"], sampler.peak) - mem0["VmRSS"]) / 1000
    print("\n== upload: POST /v1/datasets, curl -F file=@big.txt ==")
    print(f"machine: {machine()}; before: {seen}; load at end: {load()}")
    print(f"target: >= {TARGET_MB_S:.0f} MB/s, API memory growth <= {TARGET_GROWTH_MB:.0f} MB")
    print(f"file: {size} bytes ({args.mib} MiB), sha256 and size verified in the answer")
    print(
        f"throughput: {rate:.0f} MB/s ({size / 2**20 / elapsed:.0f} MiB/s) in {elapsed:.2f} s  "
        f"{'MEETS' if rate >= TARGET_MB_S else 'short'}"
    )
    print(
        f"API RSS: before {mem0['VmRSS'] / 1000:.1f} MB, after {mem1['VmRSS'] / 1000:.1f} MB "
        f"(+{growth_rss:.1f}); peak during upload +{growth_peak:.1f} MB "
        f"(VmHWM {mem0['VmHWM'] / 1000:.1f} -> {mem1['VmHWM'] / 1000:.1f} MB)  "
        f"{'MEETS' if growth_peak <= TARGET_GROWTH_MB else 'short'}"
    )
    print(
        f"CPU: API {api_cpu:.2f} s ({api_cpu / elapsed:.0%} of one core), "
        f"curl {curl_cpu:.2f} s ({curl_cpu / elapsed:.0%})"
    )


if __name__ == "__main__":
    main()
