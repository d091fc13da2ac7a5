"""Cleaning speed and memory: MB/s per core of one streaming pass, near-duplicate step on
and off, on a generated corpus with planted defects (trainyard.cleaning.planted).

Each configuration runs in a fresh process, so its peak RSS is its own; MB/s per core is
input bytes over that process's CPU seconds (the pass is single-threaded).

    python bench/cleaning.py [--documents 8000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine  # noqa: E402
from trainyard.cleaning.pipeline import clean_file  # noqa: E402
from trainyard.cleaning.planted import generate  # noqa: E402
from trainyard.cleaning.spec import CleaningSpec  # noqa: E402

CONFIGS = {
    "all steps (defaults)": {},
    "near-duplicate step off": {"dedup": {"near": False}},
    "dedup and quality off (repair only)": {
        "dedup": {"near": False, "exact": False},
        "quality": {"enabled": False},
    },
}


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(source: Path, fmt: str, options: dict[str, object]) -> None:
    """Clean once and print what it cost, as one JSON line."""
    rss_before = rss_mb()
    spec = CleaningSpec.model_validate(options)
    wall, cpu = time.perf_counter(), time.process_time()
    report = clean_file(source, source.with_suffix(".out"), fmt, spec)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_after = rss_mb()
    print(
        json.dumps(
            {
                "mb": report.bytes_in / 1e6,
                "cpu_s": cpu,
                "wall_s": wall,
                "rss_before_mb": rss_before,
                "peak_rss_mb": peak,
                "rss_after_mb": rss_after,
                "docs_in": report.documents_in,
                "docs_out": report.documents_out,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["text", "jsonl"], default="jsonl")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "OPTIONS"))
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.format, json.loads(args.child[1]))
        return
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / f"planted.{args.format}"
        generate(args.documents, seed=args.seed).write(source, args.format)
        size = source.stat().st_size / 1e6
        print(f"corpus: {args.documents} clean documents plus plants, {size:.1f} MB")
        print(
            "| configuration | MB/s per core | CPU s | wall s | RSS before/after MB (peak)"
            " | docs in/out |"
        )
        print("|---|---|---|---|---|---|")
        for name, options in CONFIGS.items():
            command = [sys.executable, __file__, "--format", args.format, "--child"]
            out = subprocess.run(
                [*command, str(source), json.dumps(options)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"| {name} | {r['mb'] / r['cpu_s']:.2f} | {r['cpu_s']:.1f} | "
                f"{r['wall_s']:.1f} | {r['rss_before_mb']:.0f}/{r['rss_after_mb']:.0f}"
                f" ({r['peak_rss_mb']:.0f})"
                f" | {r['docs_in']}/{r['docs_out']} |  load {load()}"
            )


if __name__ == "__main__":
    main()
