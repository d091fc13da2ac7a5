"""Supervised fine-tuning: the base model, its adapters and the chat samples of a run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from trainer import chat, parallel
from trainer import tokenizer as tokmod
from trainer.config import SFTConfig, SFTDataConfig
from trainer.hf_import import (
    added_chat_token_ids,
    load_base_model,
    resize_token_embeddings,
    train_token_rows,
)
from trainer.loop import Trainer
from trainer.lora import DEFAULT_TARGETS, apply_lora, merged_state_dict
from trainer.model import IGNORE_INDEX, CausalLM
from trainer.sample import LoadedModel, generate
from trainer.sft_data import SFTData
from trainer.sft_shards import load_sft_index


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
    built: SFTModel, *, lr: float, weight_decay: float, device_type: str
) -> torch.optim.AdamW:
    """AdamW over the trainable tensors: decay on matrices, none on vectors or token rows."""
    special = {id(p) for p in built.no_decay}
    params = [p for p in built.model.parameters() if p.requires_grad and id(p) not in special]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2] + built.no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=device_type == "cuda"
    )


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


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the positions that carry a label; logits (B, T, V)."""
    # fp32 loss: bf16 logits lose too much precision in the log-softmax.
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def token_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many labelled positions the model's top token gets right; logits (B, T, V)."""
    return ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum().float()


class SFTTrainer(Trainer):
    """The Trainer with a base model, chat batches, per-token loss and chat samples."""

    sft: SFTConfig
    data: SFTData
    data_class: type[SFTData] = SFTData
    step_metrics: tuple[str, ...] = ("loss", "token_accuracy")
    val_metrics: tuple[str, ...] = ("val_loss", "val_token_accuracy")

    def _build_model(self) -> CausalLM:
        cfg, t = self.cfg, self.cfg.training
        assert cfg.sft is not None
        self.sft = cfg.sft
        if self.sft.method == "lora" and self.sharded:
            raise ValueError("sft.method 'lora' runs under strategy 'ddp'; use 'ddp'")
        self.tokenizer = tokmod.load(cfg.tokenizer_path)
        self.im_end_id = chat.special_id(self.tokenizer, tokmod.IM_END)
        self.built = build_sft_model(self.sft, self.tokenizer, dropout=t.dropout, seq_len=t.seq_len)
        model = self.built.model
        self.model_cfg = model.cfg
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.events.emit(
            "log",
            message=f"fine-tuning {self.sft.base_model_dir} ({self.sft.method}): "
            f"{trainable} trainable parameters, chat token rows added: "
            f"{self.built.added_token_ids}, LoRA on {len(self.built.lora_modules)} layers",
        )
        return model.to(self.dist.device)

    def _build_optimizer(self) -> torch.optim.AdamW:
        t = self.cfg.training
        return sft_optimizer(
            self.built, lr=t.lr, weight_decay=t.weight_decay, device_type=self.dist.device.type
        )

    def _build_data(self) -> SFTData:
        cfg, t, dist = self.cfg, self.cfg.training, self.dist
        assert isinstance(cfg.data, SFTDataConfig)
        index = load_sft_index(cfg.data.train)
        if index["vocab_size"] != tokmod.vocab_size(self.tokenizer):
            raise ValueError(
                f"the SFT shards in {cfg.data.train} were tokenized with a different tokenizer "
                f"(vocab {index['vocab_size']}) than {cfg.tokenizer_path}; use the tokenizer.json "
                "saved beside the shards"
            )
        data = self.data_class(
            cfg.data.train,
            cfg.data.val,
            t.seq_len,
            packing=self.sft.packing,
            seed=t.seed,
            rank=self.layout.dp_rank,  # a tensor-parallel group reads one stream
            world_size=self.layout.dp_size,
            device=dist.device,
        )
        if self.sft.epochs is not None:
            # The run length follows the data: the schedule and progress use these steps.
            steps = data.steps_for_epochs(self.sft.epochs, t.batch_size)
            self.cfg = dataclasses.replace(cfg, training=dataclasses.replace(t, max_steps=steps))
        return data

    def _step_batches(self, count: Callable[[Any], int]) -> tuple[list[Any], torch.Tensor]:
        """This step's micro-batches, and the factor that gives every unit they `count` the
        same weight in the global batch, however they fell into rows, micro-batches and
        ranks: world size over the global count (gradients are averaged over ranks)."""
        t, dist = self.cfg.training, self.dist
        batches = [self.data.next_train_batch(t.micro_batch_size) for _ in range(self.grad_accum)]
        n = torch.tensor(float(sum(count(b) for b in batches)), device=dist.device)
        dist.all_reduce_sum(n)
        return batches, dist.world_size / n.clamp(min=1.0)

    def _forward_backward(self) -> torch.Tensor:
        dist = self.dist
        # Every loss token weighs the same.
        batches, scale = self._step_batches(lambda b: int(b.n_targets))
        shares = torch.zeros(2, device=dist.device)  # (loss, token accuracy)
        contexts = parallel.micro_steps(self.model, self.grad_accum)
        for batch, sync_ctx in zip(batches, contexts, strict=True):
            with sync_ctx:
                with self.autocast:
                    logits, _ = self.model(
                        batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
                    )
                loss = token_loss_sum(logits, batch.labels) * scale
                penalty = self._router_penalty()  # a mixture of experts' router losses
                (loss if penalty is None else loss + penalty / self.grad_accum).backward()
            shares += torch.stack([loss.detach(), token_correct(logits, batch.labels) * scale])
        return shares

    def _val_loss_terms(self, batch: Any) -> tuple[torch.Tensor, float]:
        logits, _ = self.raw_model(
            batch.input_ids, position_ids=batch.position_ids, doc_ids=batch.doc_ids
        )
        loss, correct = token_loss_sum(logits, batch.labels), token_correct(logits, batch.labels)
        return torch.stack([loss, correct]), float(batch.n_targets)

    def _evaluate(self) -> float:
        if self.data.val is None:
            return math.nan  # no validation set: val_loss stays null
        return super()._evaluate()

    def _data_without_rank_state(self, step: int) -> None:
        # Every step reads batch_size rows of the one stream, so the step gives the place.
        self.data.load_state_dict({"epoch": 0, "cursor": 0})
        self.data.skip_rows(step * self.cfg.training.batch_size)

    def _after_training(self) -> None:
        """Answer the eval prompts greedily and report each as a sample event."""
        if not self.sft.eval_prompts:
            return
        # Under FSDP a forward pass is a collective, so every rank generates in lockstep.
        if not (self.dist.is_main or self.sharded):
            return
        self.raw_model.eval()
        for prompt in self.sft.eval_prompts:
            messages = [{"role": m.role, "content": m.content} for m in prompt]
            reply = chat_reply(
                self.raw_model,
                self.tokenizer,
                messages,
                max_new_tokens=self.sft.eval_max_new_tokens,
                device=self.dist.device,
            )
            self.events.emit("sample", step=self.step, messages=messages, completion=reply)

    def _export_state(self) -> dict[str, Any]:
        state = super()._export_state()
        if self.built.lora_modules:
            lora = self.sft.lora
            state = merged_state_dict(state, lora.alpha / lora.rank)
        return state
