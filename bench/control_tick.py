"""The control loop's tick with many jobs waiting: what one pass costs (wall and CPU) as the
queue grows, as in `mixed_load.py`, where submitters queue hundreds of jobs that no node
can run. `--profile` prints the top of a cProfile of the ticks at the largest queue.

The stack's own control process is stopped; the ticks run here, in one process, on the
stack's database. The waiting jobs are prepared copies of one job the API created
(inserted with SQL: creating them over the API would take minutes and measure the API).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import socket
import statistics
import time

from _common import corpus, load, machine, running_stack, tiny_spec
from sqlalchemy import create_engine, text

from trainyard.client import Client


def main() -> None:
    """Start a stack, grow its queue step by step, time the ticks at each size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, nargs="+", default=[1, 100, 600, 2000])
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    with running_stack(node=False, extra_env={"TRAINYARD_RATE_LIMITS": "off"}) as stack:
        client = Client(stack.url, stack.new_key("ticks"))
        path = stack.workdir / "corpus.txt"
        path.write_text(corpus(200))
        ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
        first = str(client.create_job(tiny_spec(str(ds["id"])))["id"])
        engine = create_engine(stack.env["TRAINYARD_DATABASE_URL"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # tokenized once; the copies reuse its shards
            with engine.connect() as conn:
                query = text("SELECT prepared FROM jobs WHERE id = :id")
                if conn.execute(query, {"id": first}).scalar_one():
                    break
            time.sleep(0.5)
        stack.stop("control")
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("TRAINYARD_")})
        from domain.db import get_sessionmaker
        from domain.lease import hold_lease
        from domain.orm import Job
        from domain.reconcile import tick
        from trainyard.ids import new_id
        from trainyard.settings import get_settings
        from trainyard.storage import Storage

        settings = get_settings()
        storage = Storage.from_settings(settings)
        factory = get_sessionmaker()
        holder = f"{socket.gethostname()}:{os.getpid()}"
        columns = [c.name for c in Job.__table__.columns if c.name != "id"]
        fixed = {"idempotency_key": "NULL", "request_hash": "NULL"}
        values = ", ".join(fixed.get(c, c) for c in columns)
        have = 1
        for queued in args.queued:
            ids = [new_id("job") for _ in range(queued - have)]
            with engine.begin() as conn:
                for i in range(0, len(ids), 1000):
                    conn.execute(
                        text(
                            f"INSERT INTO jobs (id, {', '.join(columns)}) SELECT ids.id, "
                            f"{values} FROM jobs, unnest(CAST(:ids AS text[])) AS ids(id) "
                            "WHERE jobs.id = :first"
                        ),
                        {"ids": ids[i : i + 1000], "first": first},
                    )
                conn.execute(text("ANALYZE jobs"))
            have = queued
            profile = cProfile.Profile() if args.profile and queued == args.queued[-1] else None
            walls, cpus = [], []
            print(f"  load {load()}")
            for _ in range(args.ticks):
                wall, cpu = time.perf_counter(), time.process_time()
                if profile:
                    profile.enable()
                with factory() as session:
                    leader = hold_lease(session, "control", holder, 60.0)
                    assert leader is not None
                    tick(session, storage, settings, leader)
                if profile:
                    profile.disable()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            print(
                f"{queued:6d} waiting: tick wall median {statistics.median(walls) * 1000:7.1f} ms"
                f" (max {max(walls) * 1000:7.1f}), CPU of this process median "
                f"{statistics.median(cpus) * 1000:7.1f} ms"
            )
            if profile:
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
                print(out.getvalue())
        engine.dispose()


if __name__ == "__main__":
    main()
