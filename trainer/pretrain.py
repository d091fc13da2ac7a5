"""Pretraining: a freshly initialised model on shuffled windows of token shards."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from trainer import parallel
from trainer.config import DataConfig, RunConfig
from trainer.data import TokenData
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.model import build_model, configure_optimizer, cross_entropy
from trainer.moe import RouterTally
from trainer.task import Loss


class PretrainTask:
    """Next-token loss on every position; a mixture of experts adds its router metrics."""

    metrics: tuple[str, ...] = ("loss",)
    val_metrics: tuple[str, ...] = ("val_loss",)
    im_end_id: int | None = None

    def __init__(
        self, cfg: RunConfig, dist: Dist, events: EventWriter, *, layout: parallel.Layout
    ) -> None:
        assert cfg.model is not None and isinstance(cfg.data, DataConfig)
        self.cfg, self.dist = cfg, dist
        self.cross_entropy = cross_entropy(cfg.training.compiles(dist.device.type))
        t = cfg.training
        # The job's training.dropout is the one hyper-parameter source; it overrides the
        # architecture's default.
        self.model = build_model(dataclasses.replace(cfg.model, dropout=t.dropout)).to(dist.device)
        # A tensor-parallel group reads one stream.
        self.data = TokenData(
            cfg.data,
            t.seq_len,
            seed=t.seed,
            rank=layout.dp_rank,
            world_size=layout.dp_size,
            device=dist.device,
        )
        self.max_steps = t.max_steps
        self.router = RouterTally(self.model.cfg.moe_layers, dist)

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW with decay on the matrices and embeddings."""
        t = self.cfg.training
        return configure_optimizer(
            self.model,
            lr=t.lr,
            weight_decay=t.weight_decay,
            device_type=self.dist.device.type,
            betas=t.betas,
        )

    def weight(self, batches: list[Any]) -> float:
        """Each micro-batch's loss is a mean over the same number of tokens: they weigh the same."""
        return 1.0 / len(batches)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Loss:
        """Mean cross-entropy of the windows x against their next tokens y, both (B, T)."""
        x, y = batch
        logits, _ = model(x)
        penalty = self.router.add(self.model.router_stats)
        return Loss(self.cross_entropy(logits, y).reshape(1), penalty)

    def extra_metrics(self) -> dict[str, Any]:
        """A mixture of experts' router losses and expert loads."""
        return self.router.metrics()

    def val_terms(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The batch's window losses summed, counting its windows (a last, shorter
        micro-batch weighs what it holds)."""
        x, y = batch
        # The model itself: DDP's forward would expect a matching backward.
        _, loss = self.model(x, y)
        assert loss is not None
        return loss.detach().reshape(1) * x.shape[0], float(x.shape[0])

    def samples(self) -> list[dict[str, Any]]:
        """None: a pretraining run has no prompts."""
        return []

    def export_state(self) -> dict[str, Any]:
        """The full model state."""
        return parallel.full_model_state(self.model)
