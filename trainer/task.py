"""What a kind of training job brings to the loop: its model, data, loss and metrics.

The Trainer (trainer.loop) owns everything the kinds share: processes, wrapping, optimizer
steps, gradient accumulation, clipping, the learning-rate schedule, evaluation cadence,
checkpoints, events and export. A Task (trainer.pretrain, trainer.sft, trainer.dpo) is
built once per run, as TASKS[cfg.type](cfg, dist, events, layout=...) in trainer.loop,
before the model is wrapped, and answers the Trainer's calls. A task compiles its loss
when the run compiles its model (`TrainingConfig.compiles`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from trainer.model import CausalLM


class StaleSamplerState(ValueError):
    """A checkpoint's sampler state from a sampler this version no longer has."""


B = TypeVar("B")


class Batches(Generic[B]):
    """Micro-batches made when read: batch i is make(i), so a large validation set never
    sits in memory whole."""

    def __init__(self, count: int, make: Callable[[int], B]) -> None:
        self.count, self.make = count, make

    @staticmethod
    def none() -> Batches[Any]:
        """No batches (a run without a validation set)."""
        return Batches[Any](0, lambda i: None)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> B:
        if not 0 <= i < self.count:
            raise IndexError(f"batch {i} of {self.count}")
        return self.make(i)


def micro_batches(rows: int, micro_batch_size: int, make: Callable[[int, int], B]) -> Batches[B]:
    """`rows` rows in micro-batches of micro_batch_size (the last may be shorter): batch i
    is make(start, end) of its rows."""

    def batch(i: int) -> B:
        start = i * micro_batch_size
        return make(start, min(start + micro_batch_size, rows))

    return Batches(-(-rows // micro_batch_size), batch)


class Data(Protocol):
    """One rank's training and validation batches, and its resumable place in them."""

    def next_train_batch(self, micro_batch_size: int) -> Any:
        """The next training micro-batch of this rank."""
        ...

    def val_batches(self, micro_batch_size: int, rows: int) -> Batches[Any]:
        """The first `rows` sequences of the fixed validation set, in micro-batches (none
        without a validation set)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """This rank's place in the training data, for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go back to a place saved by state_dict (StaleSamplerState: one this version
        cannot read)."""
        ...

    def restart_at(self, step: int, batch_size: int) -> None:
        """Place a rank that has no saved state (world size grew) at optimizer step `step`."""
        ...


@dataclass
class Loss:
    """The forward pass of one training micro-batch."""

    # Sums of the task's metrics over the micro-batch, in order; sums[0] is the loss and
    # carries the gradient.
    sums: torch.Tensor
    # A mixture of experts' router penalty (a mean over the micro-batch): trained on, never
    # reported. None without experts.
    penalty: torch.Tensor | None = None


class Task(Protocol):
    """One kind of training job (the run config's type), as the Trainer uses it."""

    model: CausalLM  # on this rank's device; the Trainer wraps (or shards) it in place
    max_steps: int  # training.max_steps, or what the data takes (fine-tuning for epochs)
    metrics: tuple[str, ...]  # what Loss.sums holds, "loss" first
    val_metrics: tuple[str, ...]  # what val_terms sums, "val_loss" first
    im_end_id: int | None  # set for chat models, whose export stops there

    @property
    def data(self) -> Data:
        """This rank's batches (each task has its own kind)."""
        ...

    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the model's trainable parameters (after it was sharded)."""
        ...

    def weight(self, batches: list[Any]) -> float | torch.Tensor:
        """The factor that turns the sums of a step's micro-batches into this rank's share
        of the step's mean: summed over ranks, the shares give the global batch's value."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> Loss:
        """Forward one training micro-batch through `model` (the wrapped model)."""
        ...

    def extra_metrics(self) -> dict[str, Any]:
        """Metrics of the step beyond the summed ones, averaged over ranks (a collective)."""
        ...

    def val_terms(self, batch: Any) -> tuple[torch.Tensor, float]:
        """Sums of val_metrics over one validation batch and what they count for in the mean."""
        ...

    def samples(self) -> list[dict[str, Any]]:
        """What the trained model answers to the run's prompts: the fields of sample events."""
        ...

    def export_state(self) -> dict[str, Any]:
        """The model's state to export (a collective under FSDP)."""
        ...
