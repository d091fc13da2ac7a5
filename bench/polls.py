"""Status polls side by side: `GET /v1/jobs/{id}` on trainyard's API and on the calibration
app (bench/calibration_app.py) on the same database, the same load generator, alternating
runs in one process. Targets: trainyard >= 0.9x the calibration's requests/s at 32
connections, with a p99 no worse than the calibration's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

import loadgen
from _common import corpus, free_port_url, load, machine, running_stack, tiny_spec, wait_http
from sqlalchemy import create_engine, text

from trainyard.client import Client
from trainyard.ids import hash_secret

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Start a stack and the calibration app, poll each in turn, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    with running_stack(node=False, extra_env={"TRAINYARD_RATE_LIMITS": "off"}) as stack:
        key = stack.new_key("polls")
        client = Client(stack.url, key)
        path = stack.workdir / "corpus.txt"
        path.write_text(corpus(200))
        ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
        job = client.create_job(tiny_spec(str(ds["id"])))
        engine = create_engine(stack.env["TRAINYARD_DATABASE_URL"])
        with engine.connect() as conn:
            project = conn.execute(
                text("SELECT project_id FROM jobs WHERE id = :id"), {"id": job["id"]}
            ).scalar_one()
        engine.dispose()
        calibration = free_port_url()
        env = {
            **stack.env,
            "CALIBRATION_KEY_HASH": hash_secret(key),
            "CALIBRATION_PROJECT": project,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.calibration_app:app",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--port",
                calibration.rsplit(":", 1)[1],
            ],
            env=env,
            cwd=ROOT,
        )
        try:
            wait_http(f"{calibration}/docs")
            targets = {"trainyard": stack.url, "calibration": calibration}
            for base in targets.values():  # warm both: connections, caches
                loadgen.run(f"{base}/v1/jobs/{job['id']}", key=key, connections=4, seconds=2)
            results: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
            for _ in range(args.rounds):
                for name, base in targets.items():
                    print(f"  {load()}")
                    r = loadgen.run(
                        f"{base}/v1/jobs/{job['id']}",
                        key=key,
                        connections=args.connections,
                        seconds=args.seconds,
                    )
                    results[name].append(r)
                    print(
                        f"{name:12} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                        f"p90 {r['p90_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                        f"max {r['max_ms']:6.1f} ms  errors {r['errors']:.0f}"
                    )
        finally:
            proc.terminate()
            proc.wait(30)
    ty = sum(r["rps"] for r in results["trainyard"]) / args.rounds
    cal = sum(r["rps"] for r in results["calibration"]) / args.rounds
    p99_ty = max(r["p99_ms"] for r in results["trainyard"])
    p99_cal = max(r["p99_ms"] for r in results["calibration"])
    print(
        f"trainyard / calibration: {ty / cal:.2f}x requests/s (target >= 0.9); "
        f"p99 {p99_ty:.1f} ms vs {p99_cal:.1f} ms; load generator: bench/loadgen.py, "
        f"{args.connections} connections, pid {os.getpid()}"
    )


if __name__ == "__main__":
    main()
