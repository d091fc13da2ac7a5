"""End-to-end SFT: a tiny pretrained base fine-tuned under torchrun, full and LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.sft_testkit import make_sft_shards, pretrain_base
from tests.trainer.trainer_testkit import read_events, run_in_process, run_trainer, write_config
from trainer import chat
from trainer import tokenizer as tokmod
from trainer.config import EXIT_OK, EXIT_PREEMPTED, RunConfig
from trainer.distributed import Dist
from trainer.events import EventWriter
from trainer.loop import Trainer
from trainer.sample import load_model

SEQ_LEN = 128
LORA_TARGETS = ["c_attn", "c_proj", "c_fc", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]
PROMPTS = [[{"role": "user", "content": "Say: river"}], [{"role": "user", "content": "Say: a"}]]


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp(f"base-{request.param}")
    export = pretrain_base(tmp, request.param, SEQ_LEN)
    train, val, tok = make_sft_shards(tmp, str(Path(export) / "tokenizer.json"), SEQ_LEN)
    return {"export": export, "train": train, "val": val, "tokenizer": tok}


def sft_config(tmp: Path, base: dict, method: str, **training: Any) -> dict[str, Any]:
    """A run.json dict for a tiny SFT run on the base fixture."""
    t = {
        "max_steps": 30,
        "seq_len": SEQ_LEN,
        "batch_size": 8,
        "micro_batch_size": 2,
        "lr": 3e-3 if method == "full" else 2e-2,
        "warmup_steps": 3,
        "min_lr": 3e-4,
        "eval_interval": 10,
        "eval_batches": 4,
        "checkpoint_interval": 10,
        "seed": 7,
        **training,
    }
    return {
        "type": "sft",
        "job_id": "job_sft",
        "tokenizer_path": base["tokenizer"],
        "data": {"format": "sft", "train": base["train"], "val": base["val"]},
        "sft": {
            "base_model_dir": base["export"],
            "method": method,
            # Every projection of either architecture: a barely pretrained base needs them.
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": LORA_TARGETS},
            "packing": True,
            "eval_prompts": PROMPTS,
            "eval_max_new_tokens": 16,
        },
        "training": t,
        "resources": {"accelerator": "cpu", "strategy": "ddp"},
        "output_dir": str(tmp / "attempt-1"),
        "checkpoint_dir": str(tmp / "checkpoints"),
        "export_dir": str(tmp / "attempt-1" / "export"),
        "keep_checkpoints": 2,
    }


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_torchrun_two_processes(tmp_path: Path, base: dict, method: str) -> None:
    raw = sft_config(tmp_path, base, method)
    assert run_trainer(write_config(raw, tmp_path / "run.json"), nproc=2, timeout=300) == EXIT_OK

    events = read_events(raw["output_dir"])
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 31))
    first = sum(e["loss"] for e in steps[:5]) / 5
    last = sum(e["loss"] for e in steps[-5:]) / 5
    assert last < first - (0.5 if method == "full" else 0.1), (first, last)
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30] and evals[-1]["val_loss"] < first
    samples = [e for e in events if e["type"] == "sample"]
    assert [s["messages"] for s in samples] == PROMPTS
    assert all(isinstance(s["completion"], str) and s["step"] == 30 for s in samples)
    done = events[-1]
    assert done["type"] == "done" and done["step"] == 30

    export = Path(done["export_dir"])
    loaded = load_model(str(export))
    assert loaded.config.vocab_size == 259  # byte tokenizer + <|im_start|>, <|im_end|>
    tok_cfg = json.loads((export / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == chat.CHAT_TEMPLATE
    assert tok_cfg["eos_token"] == tokmod.IM_END
    assert tokmod.load(str(export / "tokenizer.json")).token_to_id(tokmod.IM_END) == 258
    names = set(json.loads((export / "config.json").read_text()))
    assert "model_type" in names
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(export))
    text = hf_tok.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)
    assert text == chat.render(PROMPTS[0], add_generation_prompt=True)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_resume_is_exact(tmp_path: Path, base: dict, method: str) -> None:
    kw = {"max_steps": 8, "eval_interval": 100, "checkpoint_interval": 100, "dropout": 0.1}
    straight = sft_config(tmp_path / "a", base, method, **kw)
    straight["sft"]["eval_prompts"] = []
    resumed = sft_config(tmp_path / "b", base, method, **kw)
    resumed["sft"]["eval_prompts"] = []
    assert run_in_process(straight) == EXIT_OK
    assert run_in_process(resumed, stop_at_step=3) == EXIT_PREEMPTED
    assert run_in_process(resumed) == EXIT_OK
    a = {e["step"]: e["loss"] for e in read_events(straight["output_dir"]) if e["type"] == "step"}
    b = {e["step"]: e["loss"] for e in read_events(resumed["output_dir"]) if e["type"] == "step"}
    assert sorted(b) == list(range(1, 9)) and a == b


def test_epochs_set_the_number_of_steps(tmp_path: Path, base: dict) -> None:
    raw = sft_config(tmp_path, base, "full", max_steps=1000, eval_interval=1000)
    raw["sft"]["epochs"] = 1
    raw["sft"]["eval_prompts"] = []
    cfg = RunConfig.from_dict(raw)
    events = EventWriter(cfg.output_dir)
    try:
        trainer = Trainer(cfg, Dist(), events)
        expected = trainer.task.data.steps_for_epochs(1, 8)
        assert trainer.cfg.training.max_steps == expected < 1000
        assert trainer.run() == EXIT_OK
    finally:
        events.close()
    done = read_events(raw["output_dir"])[-1]
    assert done["type"] == "done" and done["step"] == expected
