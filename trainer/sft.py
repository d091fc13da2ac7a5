"""Supervised fine-tuning (SFTTask) and what preference tuning shares with it (FineTuning):
the base model made ready with its adapters, chat batches, chat samples and the export."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from trainer import chat, parallel
from trainer import tokenizer as tokmod
from trainer.config import RunConfig, SFTConfig, SFTDataConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.hf_import import (
    added_chat_token_ids,
    load_base_model,
    resize_token_embeddings,
    train_token_rows,
)
from trainer.lora import DEFAULT_TARGETS, apply_lora, merged_state_dict
from trainer.model import IGNORE_INDEX, CausalLM, cross_entropy, token_cross_entropy
from trainer.moe import RouterTally
from trainer.sample import LoadedModel, generate
from trainer.sft_data import SFTBatch, SFTData
from trainer.sft_shards import load_sft_index
from trainer.task import Loss


@dataclass
class SFTModel:
    """A base model made ready for fine-tuning, and what was done to it."""

    model: CausalLM
    added_token_ids: list[int]  # rows grown (or reset) for chat tokens the base lacked
    lora_modules: list[str]  # wrapped layers; empty for full fine-tuning
    no_decay: list[torch.Tensor]  # extra trainable tensors that must not be decayed


def build_sft_model(sft: SFTConfig, tok: Tokenizer, *, dropout: float, seq_len: int) -> SFTModel:
    """Load the base model, grow it for tok's chat tokens and add LoRA if asked."""
    model = load_base_model(sft.base_model_dir, dropout=dropout)
    if seq_len > model.cfg.seq_len:
        raise ValueError(
            f"training.seq_len ({seq_len}) exceeds the base model's context ({model.cfg.seq_len})"
        )
    added = added_chat_token_ids(sft.base_model_dir, tok)
    vocab = max(model.cfg.vocab_size, tokmod.vocab_size(tok))
    if added or vocab > model.cfg.vocab_size:
        resize_token_embeddings(model, vocab, added)
    if sft.method == "full":
        return SFTModel(model, added, [], [])
    lora = sft.lora
    targets = lora.target_modules or DEFAULT_TARGETS[model.cfg.arch]
    wrapped = apply_lora(
        model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=targets
    )
    # Adapters alone cannot teach the chat tokens: their rows must learn too.
    chat_ids = [chat.special_id(tok, t) for t in chat.CHAT_TOKENS]
    return SFTModel(model, added, wrapped, train_token_rows(model, chat_ids))


def sft_optimizer(
    built: SFTModel,
    *,
    lr: float,
    weight_decay: float,
    device_type: str,
    betas: tuple[float, float],
) -> torch.optim.AdamW:
    """AdamW over the trainable tensors: decay on matrices, none on vectors or token rows."""
    special = {id(p) for p in built.no_decay}
    params = [p for p in built.model.parameters() if p.requires_grad and id(p) not in special]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2] + built.no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=device_type == "cuda")


def chat_reply(
    model: nn.Module,
    tok: Tokenizer,
    messages: Sequence[chat.Message],
    *,
    max_new_tokens: int,
    device: torch.device,
) -> str:
    """The greedy assistant reply to messages, stopped at `<|im_end|>` or EOT."""
    assert isinstance(model, CausalLM)
    loaded = LoadedModel(model, tok, model.cfg, chat.special_id(tok, tokmod.IM_END), device)
    prompt = chat.render(messages, add_generation_prompt=True)
    return generate(loaded, prompt, max_new_tokens, temperature=0.0, stop_ids=chat.stop_ids(tok))


def token_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ce: Callable[..., torch.Tensor] = token_cross_entropy,
) -> torch.Tensor:
    """Summed loss and number of correct top tokens over the labelled positions: (2,);
    logits (B, T, V). ce computes the cross-entropy (compiled or not)."""
    loss = ce(logits, labels, reduction="sum")
    correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum().float()
    return torch.stack([loss, correct])


def unit_weight(units: int, dist: Dist) -> torch.Tensor:
    """The factor that gives every unit (token, pair) of a step the same weight in the global
    batch, however they fell into rows, micro-batches and ranks: world size over the global
    count of `units`, this rank's count (gradients are averaged over ranks)."""
    n = torch.tensor(float(units), device=dist.device)
    dist.all_reduce_sum(n)
    return dist.world_size / n.clamp(min=1.0)


class FineTuning:
    """What the fine-tuning tasks (SFT, DPO) share: the base model made ready, the chat
    shards, the optimizer, greedy answers to the eval prompts and an export with the
    adapters merged."""

    data_class: type[SFTData] = SFTData  # the batches of the shards' kind

    def __init__(
        self, cfg: RunConfig, dist: Dist, events: EventWriter, *, layout: parallel.Layout
    ) -> None:
        assert cfg.sft is not None and isinstance(cfg.data, SFTDataConfig)
        self.cfg, self.dist, self.sft = cfg, dist, cfg.sft
        self.cross_entropy = cross_entropy(cfg.training.compiles(dist.device.type))
        self.layout, self.sharded = layout, layout.sharded
        t = cfg.training
        if self.sft.method == "lora" and self.sharded:
            raise ValueError("sft.method 'lora' runs under strategy 'ddp'; use 'ddp'")
        self.tokenizer = tokmod.load(cfg.tokenizer_path)
        self.im_end_id: int | None = chat.special_id(self.tokenizer, tokmod.IM_END)
        self.built = build_sft_model(self.sft, self.tokenizer, dropout=t.dropout, seq_len=t.seq_len)
        self.model = self.built.model.to(dist.device)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        events.emit(
            "log",
            message=f"fine-tuning {self.sft.base_model_dir} ({self.sft.method}): "
            f"{trainable} trainable parameters, chat token rows added: "
            f"{self.built.added_token_ids}, LoRA on {len(self.built.lora_modules)} layers",
        )
        index = load_sft_index(cfg.data.train)
        if index["vocab_size"] != tokmod.vocab_size(self.tokenizer):
            raise ValueError(
                f"the SFT shards in {cfg.data.train} were tokenized with a different tokenizer "
                f"(vocab {index['vocab_size']}) than {cfg.tokenizer_path}; use the tokenizer.json "
                "saved beside the shards"
            )
        self.data = self.data_class(
            cfg.data.train,
            cfg.data.val,
            t.seq_len,
            packing=self.sft.packing,
            seed=t.seed,
            rank=self.layout.dp_rank,  # a tensor-parallel group reads one stream
            world_size=self.layout.dp_size,
            device=dist.device,
        )
        self.max_steps = t.max_steps
        if self.sft.epochs is not None:  # the run length follows the data
            self.max_steps = self.data.steps_for_epochs(self.sft.epochs, t.batch_size)

    def optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable tensors (see sft_optimizer)."""
        t = self.cfg.training
        return sft_optimizer(
            self.built,
            lr=t.lr,
            weight_decay=t.weight_decay,
            device_type=self.dist.device.type,
            betas=t.betas,
        )

    def samples(self) -> list[dict[str, Any]]:
        """The greedy answers to the eval prompts (on rank 0, or every rank under FSDP)."""
        # Under FSDP a forward pass is a collective, so every rank generates in lockstep.
        if not self.sft.eval_prompts or not (self.dist.is_main or self.sharded):
            return []
        self.model.eval()
        samples = []
        for prompt in self.sft.eval_prompts:
            messages = [{"role": m.role, "content": m.content} for m in prompt]
            reply = chat_reply(
                self.model,
                self.tokenizer,
                messages,
                max_new_tokens=self.sft.eval_max_new_tokens,
                device=self.dist.device,
            )
            samples.append({"messages": messages, "completion": reply})
        return samples

    def export_state(self) -> dict[str, Any]:
        """The full model state, adapters merged into their layers."""
        state = parallel.full_model_state(self.model)
        if self.built.lora_modules:
            lora = self.sft.lora
            state = merged_state_dict(state, lora.alpha / lora.rank)
        return state


class SFTTask(FineTuning):
    """Chat batches with per-token loss and accuracy; a mixture of experts adds its router
    metrics."""

    metrics: tuple[str, ...] = ("loss", "token_accuracy")
    val_metrics: tuple[str, ...] = ("val_loss", "val_token_accuracy")

    def __init__(
        self, cfg: RunConfig, dist: Dist, events: EventWriter, *, layout: parallel.Layout
    ) -> None:
        super().__init__(cfg, dist, events, layout=layout)
        self.router = RouterTally(self.model.cfg.moe_layers, dist)

    def weight(self, batches: list[SFTBatch]) -> torch.Tensor:
        """Every loss token of the step weighs the same."""
        return unit_weight(sum(b.n_targets for b in batches), self.dist)

    def loss(self, model: nn.Module, batch: SFTBatch) -> Loss:
        """Summed loss and correct tokens over the batch's labelled positions."""
        logits, _ = model(batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids)
        penalty = self.router.add(self.model.router_stats)
        return Loss(token_sums(logits, batch.labels, self.cross_entropy), penalty)

    def extra_metrics(self) -> dict[str, Any]:
        """A mixture of experts' router losses and expert loads."""
        return self.router.metrics()

    def val_terms(self, batch: SFTBatch) -> tuple[torch.Tensor, float]:
        """Summed loss and correct tokens, counting as the batch's labelled positions."""
        logits, _ = self.model(
            batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
        )
        return token_sums(logits, batch.labels, self.cross_entropy), float(batch.n_targets)
