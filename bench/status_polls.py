"""Status polls: `GET /v1/jobs/{id}` throughput and latency against uvicorn + PostgreSQL.

Load generator: wrk (C), one thread, keep-alive connections, Authorization via a Lua script.
Runs the API with `--workers 1` (the Stack's own) and `--workers 2` (a second process).
Target: >= 1,500 requests/s with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import (
    children,
    corpus,
    cpu_by_pid,
    cpu_used,
    free_port_url,
    load,
    machine,
    pids_named,
    running_stack,
    tiny_spec,
    wait_http,
    wait_quiet,
)

from trainyard.client import Client

TARGET_RPS = 1500.0
TARGET_P99_MS = 50.0


def lua_script(key: str) -> Path:
    """A wrk script that signs every request with the key."""
    path = Path(tempfile.mkstemp(prefix="wrk-", suffix=".lua")[1])
    path.write_text(f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {key}"\n')
    return path


def to_ms(value: str) -> float:
    """A wrk duration ("812.00us", "3.41ms", "1.02s") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(value)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run; requests/s, latency percentiles (ms) and error counts."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    result: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = to_ms(m[1]) if m else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non2xx"] = float(bad[1]) if bad else 0.0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(x) for x in errs.groups())) if errs else 0.0
    return result


def measure(
    label: str, url: str, script: Path, connections: list[int], seconds: int, api_pid: int
) -> list[str]:
    """Warm up, then one wrk run per connection count; result lines with CPU per request."""
    wrk(url, script, connections[0], 3)
    lines = []
    for conns in connections:
        seen = wait_quiet()
        api = [api_pid, *children(api_pid)]
        pg = pids_named("postgres")
        api0, pg0 = cpu_by_pid(api), cpu_by_pid(pg)
        r = wrk(url, script, conns, seconds)
        n = max(1.0, r["rps"] * seconds)
        api_us = cpu_used(api0) / n * 1e6
        pg_us = cpu_used(pg0) / n * 1e6
        ok = r["rps"] >= TARGET_RPS and r["p99"] <= TARGET_P99_MS
        lines.append(
            f"{label:<10} c={conns:<3} {r['rps']:6.0f} req/s  p50 {r['p50']:6.2f} ms  "
            f"p90 {r['p90']:6.2f} ms  p99 {r['p99']:6.2f} ms  errors {r['non2xx']:.0f}/"
            f"{r['socket_errors']:.0f}  cpu/req api {api_us:4.0f} us, pg {pg_us:4.0f} us  "
            f"{'MEETS' if ok else 'short'}  [before: {seen}]"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    """Start a Stack (no node, so the job stays queued), poll one job, print results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--workers", default="1,2", help="API worker counts to measure")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    conns = [int(c) for c in args.connections.split(",")]
    lines: list[str] = []
    with running_stack(node=False) as stack:
        key = stack.new_key("bench-status")
        with Client(stack.url, key) as client, tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "corpus.txt"
            path.write_text(corpus())
            ds = client.wait_dataset(client.upload_dataset(path, name="corpus")["id"])
            job_id = client.create_job(tiny_spec(ds["id"]))["id"]
        script = lua_script(key)
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                name, url = "api", stack.url
                if workers != 1:
                    name, url = f"api{workers}", free_port_url()
                    port = url.rsplit(":", 1)[1]
                    stack.start(name, "api", "--port", port, "--workers", str(workers))
                    wait_http(url + "/healthz")
                pid = stack.procs[name].pid
                label = f"workers={workers}"
                lines += measure(label, f"{url}/v1/jobs/{job_id}", script, conns, args.seconds, pid)
                if name != "api":
                    stack.stop(name)
        finally:
            script.unlink(missing_ok=True)
    print("\n== status_polls: GET /v1/jobs/{id} (wrk -t1, keep-alive, queued job) ==")
    print(f"machine: {machine()}; load at end: {load()}")
    print(f"target: >= {TARGET_RPS:.0f} req/s with p99 <= {TARGET_P99_MS:.0f} ms")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
