"""Mixed load: 100 pollers, each polling `GET /v1/jobs/{id}` once a second (as dashboards
and scripts do), while 10 submitters each create a job a second with `POST /v1/jobs`, for
60 s, on one API process. Targets: 0 errors and a p99 of at most 100 ms over all requests.
`--interval 0` sends back to back instead (a saturation test, not the target's load).
"""

from __future__ import annotations

import argparse
import datetime
import json

import loadgen
from _common import (
    children,
    corpus,
    cpu_by_pid,
    cpu_used,
    load,
    machine,
    pids_named,
    running_stack,
    tiny_spec,
)

from trainyard.client import Client


def main() -> None:
    """Start a stack, seed jobs to poll, run the mixed load, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--submitters", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between requests")
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}")
    with running_stack(node=False, extra_env={"TRAINYARD_RATE_LIMITS": "off"}) as stack:
        key = stack.new_key("mixed")
        client = Client(stack.url, key)
        path = stack.workdir / "corpus.txt"
        path.write_text(corpus(200))
        ds = client.wait_dataset(str(client.upload_dataset(path)["id"]))
        spec = tiny_spec(str(ds["id"]))
        job_ids = [str(client.create_job(spec)["id"]) for _ in range(20)]
        body = json.dumps(spec).encode()
        groups = {
            "poll": loadgen.Group(
                args.pollers,
                lambda n: ("GET", f"/v1/jobs/{job_ids[n % len(job_ids)]}", b""),
                args.interval,
            ),
            "submit": loadgen.Group(
                args.submitters, lambda _n: ("POST", "/v1/jobs", body), args.interval
            ),
        }
        loadgen.run(f"{stack.url}/v1/jobs/{job_ids[0]}", key=key, connections=4, seconds=2)
        procs = {
            name: [stack.procs[name].pid, *children(stack.procs[name].pid)]
            for name in ("api", "control", "prep")
        }
        before = {name: cpu_by_pid(pids) for name, pids in procs.items()}
        postgres = cpu_by_pid(pids_named("postgres"))
        print(f"  load {load()}")
        results = loadgen.run_groups(stack.url, key=key, groups=groups, seconds=args.seconds)
        print(f"  load {load()}")
        used = {name: cpu_used(b) for name, b in before.items()}
        used["postgres (all databases)"] = cpu_used(postgres)
        print(
            "  CPU seconds used during the run: "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items())
        )
    for name, r in results.items():
        print(
            f"{name:7} {r['requests']:7.0f} requests {r['rps']:6.0f}/s  p50 {r['p50_ms']:6.1f} ms"
            f"  p99 {r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms  errors {r['errors']:.0f}"
        )
    everything = results["all"]
    print(
        f"{args.pollers} pollers + {args.submitters} submitters, one request each every "
        f"{args.interval} s, {args.seconds:.0f} s: "
        f"errors {everything['errors']:.0f} (target 0), p99 {everything['p99_ms']:.1f} ms "
        "(target <= 100)"
    )


if __name__ == "__main__":
    main()
