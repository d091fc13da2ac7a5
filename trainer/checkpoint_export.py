"""A fine-tuning checkpoint as a model folder: what the run would have exported had it
ended at that step, so a checkpoint can be sampled like any finished model.

The checkpoint holds the trained model's state (LoRA adapters still apart, or FSDP's
shards); the run's config says which base it grew from, its tokenizer and its adapters'
scaling. Only files the trainer wrote itself are read, with weights_only loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import torch

from trainer import chat
from trainer import checkpoint as ckpt
from trainer import tokenizer as tokmod
from trainer.config import RunConfig
from trainer.export import export_model
from trainer.hf_config import model_config_from_hf
from trainer.lora import merged_state_dict
from trainer.model import build_model


def _model_state(step_dir: str, template: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The model state of a checkpoint: model.pt, or the model part of FSDP's shards read
    whole (no process group needed) into tensors shaped like `template`."""
    sharded = os.path.join(step_dir, ckpt.SHARDED)
    if os.path.isdir(sharded):
        import torch.distributed.checkpoint as dcp

        state = {"model": {k: torch.empty_like(v) for k, v in template.items()}}
        with warnings.catch_warnings():  # one process reading it all is the intent here
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            dcp.load(state, checkpoint_id=sharded)
        return state["model"]
    loaded: dict[str, Any] = torch.load(
        os.path.join(step_dir, "model.pt"), map_location="cpu", weights_only=True
    )
    return loaded


def export_checkpoint(run: RunConfig, step_dir: str, export_dir: str) -> str:
    """Write the model of a fine-tuning run's checkpoint to export_dir (atomically), as
    trainer.export does at the end of a run; the folder."""
    if run.sft is None:
        raise ValueError("only fine-tuning checkpoints are exported on their own")
    tok = tokmod.load(run.tokenizer_path)
    with open(os.path.join(run.sft.base_model_dir, "config.json"), encoding="utf-8") as f:
        base = model_config_from_hf(json.load(f))
    # The base grown to the tokenizer's chat tokens, as trainer.sft builds it.
    vocab = max(base.vocab_size, tokmod.vocab_size(tok))
    cfg = dataclasses.replace(base, vocab_size=vocab, dropout=0.0)
    model = build_model(cfg)
    state = _model_state(step_dir, model.state_dict())
    if any(k.endswith(".lora_A") for k in state):
        state = merged_state_dict(state, run.sft.lora.alpha / run.sft.lora.rank)
    model.load_state_dict(state, strict=True)  # the checkpoint must be this model's
    return export_model(
        model.state_dict(),
        cfg,
        tokenizer_path=run.tokenizer_path,
        eot_id=tokmod.eot_id(tok),
        export_dir=export_dir,
        im_end_id=chat.special_id(tok, tokmod.IM_END),
    )
