"""Preference tuning with DPO (Rafailov et al., 2023): the SFT trainer with pairs, a frozen
reference model and the DPO loss.

For a pair (prompt x, chosen y_w, rejected y_l), with log pi(y | x) summed over the
answer's tokens only (its content and closing `<|im_end|>`):

    reward(y)  = beta * (log pi_policy(y | x) - log pi_reference(y | x))
    loss       = -log sigmoid(reward(y_w) - reward(y_l))

The reference is the base model, frozen: a copy taken before any step, held whole on every
rank (it is never sharded, so under FSDP it costs one full model per rank) and run without
gradients each step. At the start policy equals reference, both rewards are 0 and the loss
is ln 2. Metrics per step, and with a `val_` prefix at each evaluation: loss,
reward_margin (mean reward(y_w) - reward(y_l)), reward_accuracy (share of pairs whose
chosen answer is ranked above the rejected one; a tie counts half), reward_chosen and
reward_rejected (the mean rewards).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from trainer import parallel
from trainer.config import DPOConfig
from trainer.dpo_data import DPOBatch, DPOData
from trainer.model import IGNORE_INDEX, CausalLM
from trainer.sft import SFTTrainer

PAIR_METRICS = ("loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected")


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, seq_ids: torch.Tensor, n_seqs: int
) -> torch.Tensor:
    """Summed log-probability of each sequence's labelled tokens: (n_seqs,); logits (B, T, V)."""
    # fp32 log-softmax: bf16 logits lose too much precision for sums over whole answers.
    token_logps = -F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
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


class DPOTrainer(SFTTrainer):
    """The SFT trainer on preference pairs, with the DPO loss against a frozen reference."""

    data: DPOData
    data_class = DPOData
    step_metrics = PAIR_METRICS
    val_metrics = tuple(f"val_{name}" for name in PAIR_METRICS)

    def _build_model(self) -> CausalLM:
        assert self.cfg.dpo is not None
        self.dpo: DPOConfig = self.cfg.dpo
        model = super()._build_model()
        # Copied before the first step (and before a resume loads trained weights).
        self.reference = copy.deepcopy(model).requires_grad_(False).eval()
        self.events.emit(
            "log",
            message=f"DPO with beta {self.dpo.beta}; the reference is a frozen copy of "
            f"{self.sft.base_model_dir}",
        )
        return model

    @torch.no_grad()
    def _reference_logps(self, batch: DPOBatch) -> torch.Tensor:
        """The reference model's summed answer log-probs for the batch's sequences."""
        with self.autocast:
            logits, _ = self.reference(
                batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
            )
        return sequence_logps(logits, batch.labels, batch.seq_ids, 2 * batch.pairs)

    def _pair_sums(self, model: torch.nn.Module, batch: DPOBatch) -> torch.Tensor:
        """PAIR_METRICS summed over the batch's pairs; the loss carries the gradient."""
        reference = self._reference_logps(batch)
        with self.autocast:
            logits, _ = model(
                batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
            )
        policy = sequence_logps(logits, batch.labels, batch.seq_ids, 2 * batch.pairs)
        return pair_sums(policy, reference, self.dpo.beta)

    def _forward_backward(self) -> torch.Tensor:
        batches, scale = self._step_batches(lambda b: int(b.pairs))  # every pair weighs the same
        shares = torch.zeros(len(PAIR_METRICS), device=self.dist.device)
        contexts = parallel.micro_steps(self.model, self.grad_accum)
        for batch, sync_ctx in zip(batches, contexts, strict=True):
            with sync_ctx:
                sums = self._pair_sums(self.model, batch) * scale
                sums[0].backward()
            shares += sums.detach()
        return shares

    def _val_loss_terms(self, batch: DPOBatch) -> tuple[torch.Tensor, float]:
        # The raw model: DDP's forward would expect a matching backward.
        return self._pair_sums(self.raw_model, batch).detach(), float(batch.pairs)
