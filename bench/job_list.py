"""The job list with 10,000 jobs in the project: `GET /v1/jobs?limit=20`, the first page
and pages further on (`after=` a cursor), and by status, from one client and from a few at
once. Target: p99 <= 50 ms.

The jobs are inserted straight into the database (10,000 creates through the API would
take minutes and measure something else); each is a finished copy of one job the API
created.

`--baseline DIR` also serves the same database from the code in DIR (e.g. `git archive` of
an earlier commit unpacked there) in a second API process, and alternates rounds between
the two, so both are measured under the same load from the machine's other users.
"""

from __future__ import annotations

import argparse
import datetime
import random
from pathlib import Path

import httpx
import loadgen
from _common import (
    children,
    corpus,
    cpu_by_pid,
    cpu_used,
    free_port_url,
    load,
    machine,
    running_stack,
    tiny_spec,
)
from sqlalchemy import create_engine, text

from domain.orm import Job
from trainyard.client import Client
from trainyard.ids import new_id


def main() -> None:
    """Start a stack, fill a project with jobs, page through them under load."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline", type=Path, help="code to compare with, side by side")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per API and page kind")
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    with running_stack(node=False, extra_env={"TRAINYARD_RATE_LIMITS": "off"}) as stack:
        key = stack.new_key("list")
        client = Client(stack.url, key)
        path = stack.workdir / "corpus.txt"
        path.write_text(corpus(200))
        ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
        first = client.create_job(tiny_spec(str(ds["id"])))
        engine = create_engine(stack.env["TRAINYARD_DATABASE_URL"])
        with engine.begin() as conn:
            project = conn.execute(
                text("SELECT project_id FROM jobs WHERE id = :id"), {"id": first["id"]}
            ).scalar_one()
            # Copies that are finished (the control loop leaves them alone), with no
            # Idempotency-Key of their own.
            fixed = {"status": "'succeeded'", "idempotency_key": "NULL", "request_hash": "NULL"}
            columns = [c.name for c in Job.__table__.columns if c.name != "id"]
            names = ", ".join(columns)
            values = ", ".join(fixed.get(c, c) for c in columns)
            ids = sorted(new_id("job") for _ in range(args.jobs - 1))
            for i in range(0, len(ids), 1000):
                conn.execute(
                    text(
                        f"INSERT INTO jobs (id, {names}) SELECT ids.id, {values} FROM jobs, "
                        "unnest(CAST(:ids AS text[])) AS ids(id) WHERE jobs.id = :first"
                    ),
                    {"ids": ids[i : i + 1000], "first": first["id"]},
                )
            conn.execute(text("ANALYZE jobs"))
            total = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
            plan = conn.execute(
                text(
                    "EXPLAIN ANALYZE SELECT * FROM jobs WHERE project_id = :p AND id < :after "
                    "ORDER BY id DESC LIMIT 21"
                ),
                {"p": project, "after": ids[len(ids) // 2]},
            ).scalars()
            print("  a deep page's plan:", " | ".join(line.strip() for line in plan))
        engine.dispose()
        print(f"  {total} jobs in the project")
        every = sorted([*ids, str(first["id"])], reverse=True)
        pages = {
            "first page": lambda _n: ("GET", "/v1/jobs?limit=20", b""),
            "deep pages": lambda _n: (
                "GET",
                f"/v1/jobs?limit=20&after={random.choice(every)}",
                b"",
            ),
            "by status": lambda _n: (
                "GET",
                f"/v1/jobs?limit=20&status=succeeded&after={random.choice(every)}",
                b"",
            ),
        }
        apis = {"api": stack.url}
        if args.baseline:
            apis["baseline"] = free_port_url()
            stack.start(
                "baseline",
                "api",
                "--port",
                apis["baseline"].rsplit(":", 1)[1],
                env={"PYTHONPATH": str(args.baseline.resolve())},
            )
            stack.wait_ready(node=False, url=apis["baseline"])
            headers = {"Authorization": f"Bearer {key}"}
            for request_of in pages.values():  # the same pages, byte for byte
                for _ in range(10):
                    _, target, _ = request_of(0)
                    bodies = {httpx.get(u + target, headers=headers).content for u in apis.values()}
                    assert len(bodies) == 1, f"the two APIs answer {target} differently"
        results: dict[str, list[dict[str, float]]] = {}
        for name, request_of in pages.items():
            for url in apis.values():
                warm = {"w": loadgen.Group(2, request_of)}
                loadgen.run_groups(url, key=key, groups=warm, seconds=1)
            for connections in (1, args.connections):
                for _ in range(args.rounds):
                    for api, url in apis.items():
                        print(f"  load {load()}")
                        label = f"{api}: {name}, {connections} conn."
                        group = {label: loadgen.Group(connections, request_of)}
                        pid = stack.procs[api].pid
                        cpu = cpu_by_pid([pid, *children(pid)])
                        r = loadgen.run_groups(url, key=key, groups=group, seconds=args.seconds)
                        r[label]["cpu_ms"] = cpu_used(cpu) * 1000 / max(1, r[label]["requests"])
                        results.setdefault(label, []).append(r[label])
    for name, rounds in results.items():
        for r in rounds:
            print(
                f"{name:32} {r['rps']:6.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']:.0f}  "
                f"API CPU {r['cpu_ms']:.2f} ms/request"
            )
    for api in apis:
        for connections in (1, args.connections):
            tail = f" {connections} conn."
            worst = max(
                r["p99_ms"]
                for n, rounds in results.items()
                if n.startswith(f"{api}:") and n.endswith(tail)
                for r in rounds
            )
            print(f"{api}: {total} jobs,{tail}: worst p99 {worst:.1f} ms (target <= 50)")


if __name__ == "__main__":
    main()
