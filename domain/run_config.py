"""The trainer's run config for one attempt, built as the trainer's own typed `RunConfig`."""

from __future__ import annotations

import json
from typing import Literal

from domain.orm import Job, Node
from trainer import shards
from trainer.config import (
    ChatMessage,
    DataConfig,
    DPOConfig,
    LoRAConfig,
    ModelConfig,
    ResourcesConfig,
    RunConfig,
    SFTConfig,
    SFTDataConfig,
    TokenRange,
    TrainingConfig,
)
from trainyard.settings import Settings
from trainyard.specs import FINE_TUNING, tuning
from trainyard.storage import Storage


def _ranges(storage: Storage, job: Job) -> tuple[DataConfig, int]:
    """The token ranges to train and validate on, and the vocabulary size of the shards."""
    key = str(job.tokenizer_key)
    main_dir = storage.tokens_dir(job.dataset_id, key)
    index = shards.load_index(str(main_dir))
    val_id = job.spec["validation"].get("dataset_id")
    if val_id:
        val_dir = storage.tokens_dir(val_id, key)
        train = shards.all_ranges(index, str(main_dir))
        val = shards.all_ranges(shards.load_index(str(val_dir)), str(val_dir))
    else:
        train, val = shards.split_ranges(index, str(main_dir), job.spec["validation"]["fraction"])
    data = DataConfig(
        dtype=index["dtype"],
        eot_id=index["eot_id"],
        train=[TokenRange(**r) for r in train],
        val=[TokenRange(**r) for r in val],
    )
    return data, int(index["vocab_size"])


def _model(job: Job, vocab_size: int, training: TrainingConfig) -> ModelConfig:
    """A pretraining job's architecture, sized to its tokenizer and context."""
    spec = job.spec
    arch = {
        k: v
        for k, v in spec["model"].items()
        if k not in ("preset", "base_model_id") and v is not None
    }
    # A BPE trained on a small corpus can stop short of the vocabulary asked for; the model
    # keeps the size the spec names, so the job runs what it says.
    vocab = max(vocab_size, int(spec["tokenizer"]["vocab_size"] or 0))
    return ModelConfig(
        **{**arch, "vocab_size": vocab, "seq_len": training.seq_len, "dropout": training.dropout}
    )


def _sft_config(storage: Storage, job: Job) -> tuple[str, SFTDataConfig, SFTConfig]:
    """A fine-tuning job's tokenizer path, chat shards and SFT section (a DPO job's
    fine-tuning settings too)."""
    sft = tuning(job.spec)
    shards_dir = storage.sft_tokens_dir(job.dataset_id, str(job.tokenizer_key))
    prompts = json.loads((shards_dir / "eval_prompts.json").read_text())
    val = shards_dir / "val"
    lora = sft["lora"] or {}
    data = SFTDataConfig(
        format="sft",
        train=str(shards_dir / "train"),
        val=str(val) if val.exists() else None,
    )
    config = SFTConfig(
        base_model_dir=str(storage.model_dir(str(job.tokenizer_key).partition("/")[0])),
        method=sft["method"],
        lora=LoRAConfig(**{k: v for k, v in lora.items() if v is not None}),
        packing=sft["packing"],
        epochs=sft["epochs"],
        eval_prompts=[
            [ChatMessage(role=m["role"], content=m["content"]) for m in p["messages"]]
            for p in prompts
        ],
    )
    return str(shards_dir / "train" / "tokenizer.json"), data, config


def run_config(
    storage: Storage, settings: Settings, job: Job, number: int, node: Node
) -> RunConfig:
    """The trainer's run.json for one attempt (raises OSError or ValueError when the
    prepared shards cannot be used)."""
    spec = job.spec
    training = TrainingConfig(**spec["training"])
    out = storage.attempt_dir(job.id, number)
    kind: Literal["pretrain", "sft", "dpo"] = "pretrain"
    data: DataConfig | SFTDataConfig
    model, sft, dpo = None, None, None
    if job.type in FINE_TUNING:
        kind = "dpo" if job.type == "dpo" else "sft"
        tokenizer_path, data, sft = _sft_config(storage, job)
        if kind == "dpo":
            dpo = DPOConfig(beta=spec["dpo"]["beta"])
    else:
        data, vocab_size = _ranges(storage, job)
        model = _model(job, vocab_size, training)
        tokenizer_path = str(storage.tokenizer_file(str(job.tokenizer_key)))
    accelerator: Literal["cpu", "gpu"] = "gpu" if node.accelerator == "gpu" else "cpu"
    return RunConfig(
        job_id=job.id,
        attempt=number,
        type=kind,
        tokenizer_path=tokenizer_path,
        data=data,
        model=model,
        sft=sft,
        dpo=dpo,
        training=training,
        resources=ResourcesConfig(
            accelerator=accelerator,
            strategy=spec["resources"]["strategy"],
            tensor_parallel_size=spec["resources"].get("tensor_parallel_size"),
            nodes=spec["resources"]["nodes"],
            processes_per_node=spec["resources"]["processes_per_node"],
            dist_timeout_seconds=settings.dist_timeout_seconds,
        ),
        output_dir=str(out),
        checkpoint_dir=str(storage.checkpoint_dir(job.id)),
        export_dir=str(out / "export"),
        keep_checkpoints=settings.keep_checkpoints,
    )
