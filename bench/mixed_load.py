"""Mixed load: 100 connections polling `GET /v1/jobs/{id}` (each its own job, in turn)
while 10 connections submit jobs with `POST /v1/jobs`, for 60 s, on one API process.
Targets: 0 errors and a p99 of at most 100 ms over all requests.
"""

from __future__ import annotations

import argparse
import datetime
import json

import loadgen
from _common import corpus, load, machine, running_stack, tiny_spec

from trainyard.client import Client


def main() -> None:
    """Start a stack, seed jobs to poll, run the mixed load, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--submitters", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60.0)
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
                args.pollers, lambda n: ("GET", f"/v1/jobs/{job_ids[n % len(job_ids)]}", b"")
            ),
            "submit": loadgen.Group(args.submitters, lambda _n: ("POST", "/v1/jobs", body)),
        }
        loadgen.run(f"{stack.url}/v1/jobs/{job_ids[0]}", key=key, connections=4, seconds=2)
        print(f"  load {load()}")
        results = loadgen.run_groups(stack.url, key=key, groups=groups, seconds=args.seconds)
        print(f"  load {load()}")
    for name, r in results.items():
        print(
            f"{name:7} {r['requests']:7.0f} requests {r['rps']:6.0f}/s  p50 {r['p50_ms']:6.1f} ms"
            f"  p99 {r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms  errors {r['errors']:.0f}"
        )
    everything = results["all"]
    print(
        f"{args.pollers} pollers + {args.submitters} submitters, {args.seconds:.0f} s: "
        f"errors {everything['errors']:.0f} (target 0), p99 {everything['p99_ms']:.1f} ms "
        "(target <= 100)"
    )


if __name__ == "__main__":
    main()
