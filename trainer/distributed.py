"""The one object that knows rank, world size and device; all collectives go through it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td


@dataclass
class Dist:
    """Process placement under torchrun (or a single plain process)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")  # noqa: RUF009

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes shared files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether there are other ranks to talk to."""
        return self.world_size > 1

    @property
    def has_group(self) -> bool:
        """Whether a process group exists (also for one rank, which FSDP needs)."""
        return td.is_available() and td.is_initialized()

    @classmethod
    def init(
        cls, accelerator: str = "auto", *, group: bool = False, timeout_s: float = 300.0
    ) -> Dist:
        """Read torchrun's environment, pick the device and join the process group.

        A group is made when there are several ranks, or when `group` asks for one and
        torchrun gave a rendezvous address (FSDP shards over a group even of one rank).
        """
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        use_cuda = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
        if use_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError("accelerator 'gpu' requested but CUDA is not available")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
            # Processes on one host share its cores; oversubscribing them thrashes.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
        want_group = world_size > 1 or (group and "MASTER_ADDR" in os.environ)
        if want_group and not td.is_initialized():
            timeout = timedelta(seconds=timeout_s)
            if use_cuda:
                td.init_process_group("nccl", device_id=device, timeout=timeout)
            else:
                td.init_process_group("gloo", timeout=timeout)
        return cls(rank, local_rank, world_size, local_world_size, device)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.is_distributed:
            td.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place, and return it."""
        if self.is_distributed:
            td.all_reduce(t, op=td.ReduceOp.SUM)
        return t

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks, in place, and return it."""
        self.all_reduce_sum(t)
        return t.div_(self.world_size)

    def close(self) -> None:
        """Leave the process group."""
        if td.is_initialized():
            td.destroy_process_group()
