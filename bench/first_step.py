"""First step: latency from `POST /v1/jobs` to the first training step on a warm node worker.

A Stack with a node worker; a dataset uploaded and tokenized, and one tiny job run first so
shards, page cache and worker processes are warm. Then tiny CPU jobs (1 and 2 processes,
20 steps) are submitted one at a time; `GET /v1/jobs/{id}` is polled every 50 ms until
progress.step >= 1, and the job's events give the timeline. Targets: <= 5 s, and no more
than one `import torch` timed in the same run (`--cold` starts jobs under torchrun, as
before the node worker's fork server, for a side-by-side comparison).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import ROOT, corpus, load, machine, running_stack, tiny_spec, wait_quiet

from trainyard.client import Client
from trainyard.storage import Storage

TARGET_S = 5.0


def ts(value: str) -> float:
    """An RFC 3339 time as a Unix timestamp."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def all_events(client: Client, job_id: str) -> list[dict[str, Any]]:
    """Every event of a job, oldest first."""
    out: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        page = client.events(job_id, after=after, limit=1000)
        out += page["data"]
        if not page["has_more"]:
            return out
        after = out[-1]["id"]


def born(path: Path | None) -> float | None:
    """A file's creation time (statx birth time), or None."""
    if path is None or not path.exists():
        return None
    out = subprocess.run(["stat", "-c", "%w", str(path)], capture_output=True, text=True)
    text = out.stdout.strip()
    if out.returncode or text in ("", "-"):
        return None
    day, clock, zone = text.split()
    whole, _, frac = clock.partition(".")
    stamp = datetime.fromisoformat(f"{day}T{whole}{zone[:3]}:{zone[3:]}").timestamp()
    return stamp + float(f"0.{frac or 0}")


def trainer_files(storage: Storage, job_id: str) -> dict[str, Any]:
    """What the attempt folder shows: file birth times and the trainer's own events."""
    folder = storage.attempt_dir(job_id, 1)
    # torchrun makes a log folder per rank when it spawns them; forked ranks have none.
    spawned = sorted(folder.glob("logs/*/attempt_0"))
    events_file = folder / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line]
    step1 = next((e for e in events if e["type"] == "step" and e.get("step") == 1), None)
    return {
        "run_json": born(folder / "run.json"),
        "spawned": born(spawned[0]) if spawned else None,
        "events_file": born(events_file),
        "step1": ts(step1["time"]) if step1 else None,
    }


def one_job(client: Client, storage: Storage, dataset_id: str, processes: int) -> dict[str, Any]:
    """Submit a job, poll to its first step, wait for the end; timings and the timeline."""
    t_post = time.time()
    job = client.create_job(tiny_spec(dataset_id, processes=processes))
    t_answer = time.time()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.job(job["id"])
        if state["progress"]["step"] >= 1:
            seen = time.time()
            break
        if state["status"] in ("failed", "cancelled", "succeeded"):
            break
        time.sleep(0.05)
    done = client.wait_job(job["id"], timeout=180)
    events = all_events(client, job["id"])
    return {
        "files": trainer_files(storage, job["id"]),
        "job": done,
        "post": t_post,
        "answer": t_answer,
        "seen": seen,
        "created": ts(job["created_at"]),
        "events": events,
    }


def first(events: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any] | None:
    """The first event of a type whose data matches."""
    for ev in events:
        if ev["type"] == kind and all(ev["data"].get(k) == v for k, v in match.items()):
            return ev
    return None


def stored(ev: dict[str, Any] | None) -> float | None:
    """When the API stored an event."""
    return ts(ev["created_at"]) if ev else None


def emitted(ev: dict[str, Any] | None) -> float | None:
    """When the trainer emitted an event (its own clock, the same machine)."""
    return ts(ev["data"]["time"]) if ev and "time" in ev["data"] else None


def breakdown(run: dict[str, Any]) -> list[tuple[str, float | None]]:
    """Named phases between the submit and the first step seen by the poller, in seconds."""
    evs, files = run["events"], run["files"]
    points: list[tuple[str, float | None]] = [
        ("POST answered (job row committed)", run["answer"]),
        ("control loop picks it up (preparing)", stored(first(evs, "status", status="preparing"))),
        ("shards reused, attempt scheduled", stored(first(evs, "scheduled"))),
        ("node worker wrote run.json", files["run_json"]),
        ("API marks the attempt running", stored(first(evs, "status", status="running"))),
        ("torchrun up, spawns the trainers", files["spawned"]),
        ("trainer: torch imported (or forked), gloo up", files["events_file"]),
        ("trainer: model+data built (`start`)", emitted(first(evs, "start"))),
        ("trainer: step 1 done", files["step1"]),
        ("poller sees progress.step >= 1", run["seen"]),
    ]
    out: list[tuple[str, float | None]] = []
    prev = run["post"]
    for name, t in points:
        out.append((name, None if t is None else max(0.0, t - prev)))
        prev = t if t is not None else prev
    return out


def import_torch_s() -> float:
    """Seconds for a fresh `python -c "import torch"` on this machine now."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t0


def reference_costs() -> dict[str, float]:
    """Bare costs on this machine: torchrun + gloo init for 2 processes."""
    py = sys.executable
    script = (
        "import torch.distributed as d; d.init_process_group('gloo'); d.barrier(); "
        "d.destroy_process_group()"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gloo_init.py"
        path.write_text(script + "\n")
        t0 = time.perf_counter()
        subprocess.run(
            [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path)],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        gloo = time.perf_counter() - t0
    return {"torchrun 2 procs + gloo init + barrier": gloo}


def main() -> None:
    """Warm a Stack up, then time submit -> first step for 1 and 2 processes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="print every event")
    parser.add_argument("--cold", action="store_true", help="torchrun, no fork server")
    args = parser.parse_args()
    runs: list[tuple[int, dict[str, Any], float]] = []
    env = {"TRAINYARD_FORK_SERVER": "false" if args.cold else "true"}
    with running_stack(node=True, extra_env=env) as stack:
        client = Client(stack.url, stack.new_key("bench-first-step"))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "corpus.txt"
            path.write_text(corpus())
            ds = client.wait_dataset(client.upload_dataset(path, name="corpus")["id"])
        storage = Storage(stack.workdir / "storage")
        warm = one_job(client, storage, ds["id"], 2)
        assert warm["job"]["status"] == "succeeded", warm["job"]
        seen = wait_quiet()
        for processes in (1, 2):
            for _ in range(args.repeat):
                # One import of torch right before each job: the yardstick under this load.
                torch_s = import_torch_s()
                run = one_job(client, storage, ds["id"], processes)
                assert run["job"]["status"] == "succeeded", run["job"]
                runs.append((processes, run, torch_s))
                print(
                    f"procs={processes} first step after {run['seen'] - run['post']:.2f} s; "
                    f"import torch {torch_s:.2f} s; load {load()}"
                )
    refs = reference_costs()
    mode = "torchrun (--cold)" if args.cold else "fork server"
    print(f"\n== first_step: POST /v1/jobs -> first step (warm node worker, tiny, cpu, {mode}) ==")
    print(f"machine: {machine()}; before: {seen}; load at end: {load()}")
    print(f"targets: <= {TARGET_S:.0f} s, and <= 1 x `import torch` timed just before")
    for processes, run, torch_s in runs:
        total = run["seen"] - run["post"]
        meets = total <= TARGET_S and total <= torch_s
        print(
            f"\nprocesses={processes}: {total:.2f} s = {total / torch_s:.2f} x import torch "
            f"({torch_s:.2f} s)  {'MEETS' if meets else 'short'}"
        )
        for name, dt in breakdown(run):
            print(f"  {name:<38} {'   n/a' if dt is None else f'+{dt:5.2f} s'}")
        if args.timeline:
            for ev in run["events"]:
                rel = stored(ev) - run["post"]
                emit = emitted(ev)
                extra = "" if emit is None else f" (emitted {emit - run['post']:+.2f})"
                print(f"    {rel:+6.2f} s {ev['type']:<10} {ev['message']}{extra}")
    print("\nreference costs on this machine:")
    for name, value in refs.items():
        print(f"  {name:<40} {value:5.2f} s")


if __name__ == "__main__":
    main()
