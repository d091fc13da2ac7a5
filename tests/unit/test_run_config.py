"""The run config the control loop writes is the trainer's own RunConfig, and what the
trainer reads back from run.json is the same object."""

from __future__ import annotations

import json
from pathlib import Path

from domain.orm import Job, Node
from domain.run_config import run_config
from trainer import shards
from trainer import tokenizer as toks
from trainer.config import DataConfig, RunConfig, SFTDataConfig
from trainyard.settings import Settings
from trainyard.specs import JobSpec
from trainyard.storage import Storage

NODE = Node(id="node_1", name="n", accelerator="cpu", slots=2, queue="q")


def job(spec: dict[str, object], tokenizer_key: str) -> Job:
    resolved = JobSpec.model_validate(spec).resolved()
    return Job(
        id="job_1",
        type=resolved["type"],
        spec=resolved,
        dataset_id="ds_1",
        tokenizer_key=tokenizer_key,
    )


def reread(config: RunConfig, tmp_path: Path) -> RunConfig:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict()))
    return RunConfig.load(str(path))


def test_pretraining_config_reads_back_as_written(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage")
    tokenizer = storage.tokenizer_file("byte")
    tokenizer.parent.mkdir(parents=True)
    toks.byte_tokenizer().save(str(tokenizer))
    docs = ["the king sails over the river\n"] * 200
    shards.write_shards(
        docs, str(tokenizer), str(storage.tokens_dir("ds_1", "byte")), append_eot=False
    )
    spec = {"dataset_id": "ds_1", "training": {"seq_len": 32}}
    config = run_config(storage, Settings(keep_checkpoints=2), job(spec, "byte"), 2, NODE)
    assert reread(config, tmp_path) == config
    assert isinstance(config.data, DataConfig) and config.data.train and config.data.val
    assert config.model is not None
    assert (config.model.seq_len, config.model.vocab_size) == (32, 257)
    assert (config.attempt, config.keep_checkpoints, config.resources.accelerator) == (2, 2, "cpu")
    assert config.output_dir == str(storage.attempt_dir("job_1", 2))
    assert config.tokenizer_path == str(tokenizer)


def test_fine_tuning_config_reads_back_as_written(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage")
    key = "mdl_1/sft-64-truncate-0.05"
    folder = storage.sft_tokens_dir("ds_1", key)
    (folder / "train").mkdir(parents=True)
    # Records may carry keys of their own beside role and content.
    messages = [{"role": "user", "content": "hi", "name": "ann"}]
    (folder / "eval_prompts.json").write_text(json.dumps([{"messages": messages}]))
    spec = {
        "type": "sft",
        "dataset_id": "ds_1",
        "model": {"base_model_id": "mdl_1"},
        "sft": {"method": "lora", "lora": {"rank": 4}},
    }
    config = run_config(storage, Settings(), job(spec, key), 1, NODE)
    assert reread(config, tmp_path) == config
    assert isinstance(config.data, SFTDataConfig) and config.data.val is None
    assert config.model is None and config.sft is not None
    assert config.sft.base_model_dir == str(storage.model_dir("mdl_1"))
    assert (config.sft.method, config.sft.lora.rank) == ("lora", 4)
    assert [[(m.role, m.content) for m in p] for p in config.sft.eval_prompts] == [[("user", "hi")]]


def test_dpo_config_reads_back_as_written(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "storage")
    key = "mdl_1/dpo-64-drop-0.05"
    folder = storage.sft_tokens_dir("ds_1", key)
    (folder / "train").mkdir(parents=True)
    (folder / "eval_prompts.json").write_text("[]")
    spec = {
        "type": "dpo",
        "dataset_id": "ds_1",
        "model": {"base_model_id": "mdl_1"},
        "dpo": {"beta": 0.25, "method": "lora", "overlong": "drop", "packing": False},
    }
    config = run_config(storage, Settings(), job(spec, key), 1, NODE)
    assert reread(config, tmp_path) == config
    assert config.type == "dpo" and config.dpo is not None and config.dpo.beta == 0.25
    assert config.sft is not None and (config.sft.method, config.sft.packing) == ("lora", False)
    assert isinstance(config.data, SFTDataConfig)
    assert config.data.train == str(storage.sft_tokens_dir("ds_1", key) / "train")
