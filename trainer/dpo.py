"""Preference tuning with DPO (Rafailov et al., 2023): the SFT task on preference pairs, with
a frozen reference model and the DPO loss.

For a pair (prompt x, chosen y_w, rejected y_l), with log pi(y | x) summed over the
answer's tokens only (its content and closing `<|im_end|>`):

    reward(y)  = beta * (log pi_policy(y | x) - log pi_reference(y | x))
    loss       = -log sigmoid(reward(y_w) - reward(y_l))

At the start policy equals reference, both rewards are 0 and the loss is ln 2. Metrics per
step, and with a `val_` prefix at each evaluation: loss, reward_margin (mean reward(y_w) -
reward(y_l)), reward_accuracy (share of pairs whose chosen answer is ranked above the
rejected one; a tie counts half), reward_chosen and reward_rejected (the mean rewards).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import parallel
from trainer.config import RunConfig
from trainer.distributed import Dist
from trainer.dpo_data import DPOBatch, DPOData
from trainer.events import EventWriter
from trainer.model import IGNORE_INDEX, token_cross_entropy
from trainer.sft import FineTuning, unit_weight
from trainer.task import Loss

PAIR_METRICS = ("loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected")


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    seq_ids: torch.Tensor,
    n_seqs: int,
    ce: Callable[..., torch.Tensor] = token_cross_entropy,
) -> torch.Tensor:
    """Summed log-probability of each sequence's labelled tokens: (n_seqs,); logits (B, T, V).
    ce computes the cross-entropy (compiled or not)."""
    token_logps = -ce(logits, labels, reduction="none")
    ids = seq_ids.reshape(-1)
    keep = (labels.reshape(-1) != IGNORE_INDEX) & (ids >= 0)
    out = torch.zeros(n_seqs, device=logits.device, dtype=torch.float32)
    return out.index_add(0, ids[keep], token_logps[keep])


def pair_sums(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """Sums over the pairs of PAIR_METRICS, from sequence log-probs ordered chosen, rejected."""
    chosen = beta * (policy[0::2] - reference[0::2])  # (pairs,)
    rejected = beta * (policy[1::2] - reference[1::2])
    margin = chosen - rejected
    losses = -F.logsigmoid(margin)
    ranked = (margin > 0).float() + 0.5 * (margin == 0).float()
    # Only the first entry, the loss, is ever backpropagated.
    return torch.stack([losses.sum(), margin.sum(), ranked.sum(), chosen.sum(), rejected.sum()])


class DPOTask(FineTuning):
    """Preference pairs with the DPO loss against a frozen reference, on the base model made
    ready as for SFT.

    The reference is the base model, frozen: a copy taken before any step (and before a
    resume loads trained weights), held whole on every rank (it is never sharded, so under
    FSDP it costs one full model per rank) and evaluated without gradients on every batch,
    in training and in evaluation; its log-probabilities are not precomputed.
    """

    metrics: tuple[str, ...] = PAIR_METRICS
    val_metrics: tuple[str, ...] = tuple(f"val_{name}" for name in PAIR_METRICS)
    data_class = DPOData

    def __init__(
        self, cfg: RunConfig, dist: Dist, events: EventWriter, *, layout: parallel.Layout
    ) -> None:
        super().__init__(cfg, dist, events, layout=layout)
        assert cfg.dpo is not None
        self.beta = cfg.dpo.beta
        self.reference = copy.deepcopy(self.model).requires_grad_(False).eval()
        if layout.fsdp and parallel.computes_in_bf16(cfg.training.precision, dist.device):
            # FSDP computes the policy with bf16 parameters, not under autocast: the
            # reference computes as it does, so the two agree before the first step.
            for p in self.reference.parameters():
                p.data = p.data.to(torch.bfloat16)
        events.emit(
            "log",
            message=f"DPO with beta {self.beta}; the reference is a frozen copy of "
            f"{self.sft.base_model_dir}",
        )

    def weight(self, batches: list[DPOBatch]) -> torch.Tensor:
        """Every pair of the step weighs the same."""
        return unit_weight(sum(b.pairs for b in batches), self.dist)

    def loss(self, model: nn.Module, batch: DPOBatch) -> Loss:
        """PAIR_METRICS summed over the batch's pairs; the loss carries the gradient."""
        return Loss(self._pair_sums(model, batch))

    def extra_metrics(self) -> dict[str, Any]:
        """None: a mixture of experts' router losses are not part of the DPO loss."""
        return {}

    def val_terms(self, batch: DPOBatch) -> tuple[torch.Tensor, float]:
        """PAIR_METRICS summed over the batch's pairs, counting as its pairs."""
        return self._pair_sums(self.model, batch).detach(), float(batch.pairs)

    def _pair_sums(self, model: nn.Module, batch: DPOBatch) -> torch.Tensor:
        """PAIR_METRICS summed over the batch's pairs, for the policy run as `model`."""
        with torch.no_grad():
            logits, _ = self.reference(
                batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
            )
            reference = sequence_logps(
                logits, batch.labels, batch.seq_ids, 2 * batch.pairs, self.cross_entropy
            )
        logits, _ = model(batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids)
        policy = sequence_logps(
            logits, batch.labels, batch.seq_ids, 2 * batch.pairs, self.cross_entropy
        )
        return pair_sums(policy, reference, self.beta)
