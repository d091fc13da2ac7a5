"""How long a trainer step takes under each OpenMP waiting policy, on an idle and a busy CPU.

A CPU rank's operators run on OpenMP threads that, between operators, spin and then sleep.
The trainer's tiny benchmark model (bench/trainer_throughput.py) trains under three
policies: no spinning (`OMP_WAIT_POLICY=PASSIVE`), the platform's short spin
(`workers.launcher.trainer_env`: `GOMP_SPINCOUNT=10000`) and GNU OpenMP's own default
(300,000 rounds); with --loads N, also while N busy processes compete for the
cores; with --reference, the plain loop (bench/reference_loop.py) on the same model and
data too. Each policy runs once per round, in turn; the median ms per step is reported.

    python bench/omp_wait.py [--loads 0 4 10] [--steps 300] [--rounds 2] [--reference]
        [--spins 1000 30000 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import load, machine, wait_quiet  # noqa: E402
from bench.trainer_throughput import (  # noqa: E402
    BATCH,
    CTX,
    reference_tokens_per_s,
    run_json,
    trainer_tokens_per_s,
)
from workers.launcher import OPENMP_SPINS, trainer_env  # noqa: E402

OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def policies(spins: list[int]) -> dict[str, dict[str, str]]:
    """Each policy's environment: this one's, less any OpenMP waiting setting, plus its own
    (and one more for each spin count asked for)."""
    base = {k: v for k, v in os.environ.items() if k not in OPENMP}
    platform = trainer_env(base)
    default = {k: v for k, v in platform.items() if k not in OPENMP}
    return {
        "passive": {**default, "OMP_WAIT_POLICY": "PASSIVE"},
        f"short spin ({OPENMP_SPINS}, the platform's)": platform,
        **{f"spin {n}": {**default, "GOMP_SPINCOUNT": str(n)} for n in spins},
        "OpenMP default": default,
    }


def ms_per_step(tokens_per_s: float) -> float:
    """A step's time in ms, from the benchmark batch's tokens a second."""
    return BATCH * CTX / tokens_per_s * 1000


def main() -> None:
    """Each load, each round, each policy: one run; print the medians."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loads", type=int, nargs="+", default=[0, 4, 10], help="busy processes")
    p.add_argument("--steps", type=int, default=300, help="at load 0; fewer under load")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reference", action="store_true", help="also time the plain loop")
    p.add_argument(
        "--spins", type=int, nargs="*", default=[], help="more GOMP_SPINCOUNT values to time"
    )
    a = p.parse_args()
    print(f"load before: {wait_quiet()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="trainyard-omp-") as d:
        tmp = Path(d)
        n_tokens = 2_000_000
        shard = tmp / "tokens.bin"
        np.random.default_rng(0).integers(0, 256, n_tokens, dtype=np.uint16).tofile(shard)
        print(f"model: bench/trainer_throughput.py's, batch {BATCH} x context {CTX}, eager")
        for busy in a.loads:
            # A busy CPU slows every step several times over: fewer steps keep the run short.
            steps = max(40, a.steps // (1 + busy))
            config = run_json(tmp, shard, n_tokens, steps, compile=False)
            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)
            ]
            try:
                results: dict[str, list[float]] = {}
                for _ in range(a.rounds):
                    for name, env in policies(a.spins).items():
                        rate = trainer_tokens_per_s(config, steps, warmup=10, env=env)
                        results.setdefault(name, []).append(ms_per_step(rate))
                        if a.reference:
                            rate = reference_tokens_per_s(shard, steps, warmup=10, env=env)
                            results.setdefault(f"{name}, plain loop", []).append(ms_per_step(rate))
                load_now = load()
            finally:
                for b in burners:
                    b.kill()
                    b.wait()
            print(f"{busy} busy processes ({steps} steps a run, load {load_now}):")
            for name, values in results.items():
                runs = ", ".join(f"{v:.1f}" for v in values)
                print(f"  {name:<36} {statistics.median(values):8.1f} ms/step  ({runs})")
    print(f"machine: {machine()}; load after: {load()}")


if __name__ == "__main__":
    main()
