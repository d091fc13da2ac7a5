"""Entry point: `torchrun --nproc_per_node N -m trainer.train --config run.json`."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import traceback

import torch

from trainer.config import EXIT_FAILED, ConfigError, RunConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.loop import NanLossError, Trainer


def _die_with_launcher() -> None:
    """End with the launcher (torchrun's agent): when the host's supervisor is killed, no
    rank may keep training unseen. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(EXIT_FAILED)


def make_deterministic() -> None:
    """Kernels that give the same bits on every run of a process like this one.

    torch's deterministic algorithms also make torch.compile fall back from atomic adds
    (the embeddings' gradient is one: float additions in whatever order the threads or
    blocks reach them); an op with no deterministic kernel warns rather than fails; cuBLAS
    gets a fixed workspace (set before CUDA starts); new tensors are not filled with NaN
    first, which deterministic mode would otherwise do to every empty one.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Parse, build, train; map the outcome to an exit code."""
    _die_with_launcher()
    parser = argparse.ArgumentParser(prog="trainer.train", description=__doc__)
    parser.add_argument("--config", required=True, help="path to run.json")
    args = parser.parse_args(argv)
    try:
        cfg = RunConfig.load(args.config)
    except (OSError, ConfigError) as e:
        # No output_dir to report to yet; stderr reaches the node worker's log.
        print(f"trainer: invalid config: {e}", file=sys.stderr)
        return EXIT_FAILED

    if cfg.training.deterministic:
        make_deterministic()
    res = cfg.resources
    dist = Dist.init(
        res.accelerator, group=res.strategy != "ddp", timeout_s=res.dist_timeout_seconds
    )
    events = EventWriter(cfg.output_dir, enabled=dist.is_main)
    trainer: Trainer | None = None
    try:
        trainer = Trainer(cfg, dist, events)
        return trainer.run()
    except NanLossError as e:
        events.emit("error", code="nan_loss", message=str(e), step=e.step)
    except torch.OutOfMemoryError as e:
        step = trainer.step if trainer else 0
        mbs = cfg.training.micro_batch_size
        events.emit(
            "error",
            code="out_of_memory",
            step=step,
            micro_batch_size=mbs,
            message=f"out of memory at micro_batch_size {mbs}: lower micro_batch_size "
            "(gradient accumulation keeps batch_size), seq_len or the model size",
            hint="lower micro_batch_size",
        )
        print(f"trainer: {e}", file=sys.stderr)
    except Exception as e:
        traceback.print_exc()
        events.emit(
            "error",
            code="trainer_error",
            message=f"{type(e).__name__}: {e}",
            step=trainer.step if trainer else 0,
        )
    finally:
        events.close()
        dist.close()
    return EXIT_FAILED


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written and closed by now; skip interpreter finalization, where native
    # destructors of the communication backend have been seen to hang after a failed run.
    os._exit(exit_code)
