"""JobSpec: defaults filled in, presets expanded, every bad combination named."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from trainer.config import PRESETS
from trainyard.specs import BYTE_VOCAB, JobSpec


def resolve(**spec: Any) -> dict[str, Any]:
    return JobSpec(dataset_id="ds_x", **spec).resolved()


def rejection(**spec: Any) -> str:
    """The first validation problem, as `location: message`."""
    with pytest.raises(ValidationError) as err:
        JobSpec(dataset_id="ds_x", **spec)
    first = err.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]) + ": " + first["msg"]


def test_omitted_fields_get_their_documented_defaults() -> None:
    spec = resolve()
    assert spec["type"] == "pretrain"
    assert spec["validation"]["fraction"] == 0.05
    assert spec["tokenizer"]["type"] == "byte"
    assert spec["tokenizer"]["vocab_size"] == BYTE_VOCAB == 257
    assert spec["model"] | PRESETS["tiny"]() == spec["model"]
    training = spec["training"]
    assert training["max_steps"] == 2000 and training["batch_size"] == 12
    assert training["micro_batch_size"] == 12  # one process: the whole batch
    assert training["min_lr"] == pytest.approx(training["lr"] / 10)
    assert spec["resources"] == {
        "nodes": 1,
        "processes_per_node": 1,
        "accelerator": "auto",
        "strategy": "ddp",
        "tensor_parallel_size": 1,
        "pool": "default",
        "priority": 50,
        "max_restarts": 3,
    }


def test_no_field_of_the_resolved_spec_is_left_unresolved() -> None:
    spec = resolve()
    training = spec["training"]
    assert all(value is not None for value in training.values()), training
    assert all(spec["model"][k] is not None for k in ("arch", "n_layer", "n_head", "d_model"))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_expands_to_its_architecture_fields(preset: str) -> None:
    model = resolve(model={"preset": preset})["model"]
    for name, value in PRESETS[preset]().items():
        if isinstance(value, dict):  # a section, with the preset's fields set
            assert model[name] | value == model[name], name
        elif name in model:
            assert model[name] == value, name
    assert model["preset"] == preset


def test_explicit_fields_override_a_preset() -> None:
    model = resolve(model={"preset": "tiny", "n_layer": 5})["model"]
    assert model["n_layer"] == 5
    assert model["d_model"] == PRESETS["tiny"]()["d_model"]


def test_explicit_architecture_without_preset() -> None:
    model = resolve(model={"arch": "llama", "n_layer": 3, "n_head": 4, "d_model": 64})["model"]
    assert (model["arch"], model["n_layer"], model["n_head"], model["d_model"]) == (
        "llama",
        3,
        4,
        64,
    )


@pytest.mark.parametrize(
    ("batch", "processes", "micro"),
    [(12, 1, 12), (12, 2, 6), (12, 3, 4), (8, 8, 1)],
)
def test_micro_batch_is_derived_from_the_world_size(batch: int, processes: int, micro: int) -> None:
    spec = resolve(training={"batch_size": batch}, resources={"processes_per_node": processes})
    assert spec["training"]["micro_batch_size"] == micro


def test_an_explicit_micro_batch_allows_gradient_accumulation() -> None:
    spec = resolve(
        training={"batch_size": 16, "micro_batch_size": 4}, resources={"processes_per_node": 2}
    )
    assert spec["training"]["micro_batch_size"] == 4


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"training": {"batch_size": 10}, "resources": {"processes_per_node": 3}}, "batch_size"),
        ({"training": {"batch_size": 12, "micro_batch_size": 5}}, "micro_batch_size"),
        (
            {
                "training": {"batch_size": 12, "micro_batch_size": 4},
                "resources": {"processes_per_node": 2},
            },
            "micro_batch_size",
        ),
        ({"training": {"warmup_steps": 50, "max_steps": 10}}, "warmup_steps"),
        ({"training": {"lr": 0.1, "min_lr": 0.2}}, "min_lr"),
        ({"training": {"lr": 0}}, "lr"),
        ({"training": {"lr": float("nan")}}, "lr"),
        ({"training": {"max_steps": 0}}, "max_steps"),
        ({"training": {"dropout": 1.0}}, "dropout"),
        ({"training": {"adam_beta2": 1.0}}, "adam_beta2"),
        ({"training": {"adam_beta1": -0.1}}, "adam_beta1"),
        ({"training": {"lr_schedule": "step"}}, "lr_schedule"),
        ({"training": {"precision": "fp8"}}, "precision"),
        ({"training": {"batch_size": 1_000_000, "eval_batches": 21}}, "eval_batches (21)"),
        ({"model": {"preset": "gpt9"}}, "preset"),
        ({"model": {"n_layer": 2, "n_head": 3, "d_model": 64}}, "n_head"),
        ({"model": {"arch": "gpt2", "n_layer": 2}}, "d_model"),
        ({"model": {"arch": "llama", "n_layer": 2, "n_head": 4, "d_model": 36}}, "head size"),
        ({"model": {"preset": "tiny", "n_kv_head": 1}}, "n_kv_head"),
        ({"model": {"preset": "tiny", "moe": {"num_experts": 4}}}, "moe applies to the llama"),
        ({"model": {"preset": "tiny-llama", "moe": {"top_k": 9}}}, "moe.top_k (9) exceeds"),
        ({"model": {"preset": "tiny-llama", "moe": {"num_experts": 0}}}, "model.moe.num_experts"),
        ({"model": {"preset": "tiny-moe", "moe": {"every_k_layers": 3}}}, "every_k_layers (3)"),
        (
            {"model": {"arch": "llama", "n_layer": 2, "n_head": 4, "d_model": 64, "n_kv_head": 3}},
            "n_kv_head",
        ),
        ({"validation": {"fraction": 0.6}}, "fraction"),
        ({"validation": {"fraction": 0.1, "dataset_id": "ds_y"}}, "dataset_id"),
        ({"resources": {"processes_per_node": 0}}, "processes_per_node"),
        ({"resources": {"nodes": 0}}, "nodes"),
        ({"resources": {"priority": 0}}, "priority"),
        ({"resources": {"priority": 100}}, "priority"),
        ({"resources": {"max_restarts": -1}}, "max_restarts"),
        ({"resources": {"pool": "Bad Pool"}}, "pool"),
        ({"type": "rlhf"}, "type"),
    ],
)
def test_each_invalid_combination_names_its_field(spec: dict[str, Any], named: str) -> None:
    assert named in rejection(**spec)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"training": {"epochs": 3}}, "training.epochs"),
        ({"model": {"preset": "tiny", "layers": 3}}, "model.layers"),
        ({"tokenizer": {"type": "byte", "merges": 10}}, "tokenizer.merges"),
        ({"validation": {"fraction": 0.1, "shuffle": True}}, "validation.shuffle"),
        ({"resources": {"gpus": 2}}, "resources.gpus"),
    ],
)
def test_unknown_fields_are_rejected_at_every_level(spec: dict[str, Any], where: str) -> None:
    assert rejection(**spec) == f"{where}: Extra inputs are not permitted"


def test_bpe_vocab_bounds() -> None:
    assert "vocab_size" in rejection(tokenizer={"type": "bpe", "vocab_size": 299})
    assert "vocab_size" in rejection(tokenizer={"type": "bpe", "vocab_size": 10**9})
    assert resolve(tokenizer={"type": "bpe", "vocab_size": 300})["tokenizer"]["vocab_size"] == 300
    assert resolve(tokenizer={"type": "bpe"})["tokenizer"]["vocab_size"] >= 300


def test_byte_vocab_is_fixed_at_257() -> None:
    assert resolve(tokenizer={"type": "byte", "vocab_size": 257})["tokenizer"]["vocab_size"] == 257
    assert "257" in rejection(tokenizer={"type": "byte", "vocab_size": 300})
    assert "257" in rejection(tokenizer={"type": "byte", "vocab_size": 256})


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"name": "run", "model": {"preset": "tiny-llama"}, "tokenizer": {"type": "bpe"}},
        {"model": {"arch": "llama", "n_layer": 2, "n_head": 4, "d_model": 64, "n_kv_head": 2}},
        {"validation": {"dataset_id": "ds_val"}},
        {"training": {"batch_size": 16, "micro_batch_size": 2, "lr": 3e-3, "min_lr": 0.0}},
        {"resources": {"processes_per_node": 4, "accelerator": "cpu", "strategy": "fsdp"}},
        {
            "model": {"preset": "tiny-llama"},
            "resources": {"processes_per_node": 2, "strategy": "tp"},
        },
        {"model": {"preset": "tiny-moe"}},
        {"model": {"preset": "tiny-llama", "moe": {"num_experts": 8, "router_z_loss_coef": 1e-3}}},
    ],
)
def test_a_resolved_spec_round_trips(spec: dict[str, Any]) -> None:
    resolved = resolve(**spec)
    assert JobSpec(**resolved).resolved() == resolved


def test_presets_keep_every_architecture_field() -> None:
    """llama-1b's feed-forward width and RoPE base reach the resolved spec, and can be set."""
    model = resolve(model={"preset": "llama-1b"})["model"]
    preset = PRESETS["llama-1b"]()
    assert model["d_ff"] == preset["d_ff"] == 8192
    assert model["rope_theta"] == preset["rope_theta"] == 500000.0
    assert resolve(model={"preset": "llama-1b", "d_ff": 4096})["model"]["d_ff"] == 4096
    assert resolve(model={"preset": "gpt2-small"})["model"]["d_ff"] is None  # 4 x d_model
    assert "rope_theta applies to the llama" in rejection(
        model={"preset": "gpt2-small", "rope_theta": 1e4}
    )


def test_moe_defaults_are_filled_in() -> None:
    moe = resolve(model={"preset": "tiny-llama", "moe": {}})["model"]["moe"]
    assert moe == {
        "num_experts": 8,
        "top_k": 2,
        "every_k_layers": 1,
        "aux_loss_coef": 0.01,
        "router_z_loss_coef": 0.0,
    }
    assert resolve(model={"preset": "tiny-llama"})["model"]["moe"] is None
    assert "Unexpected keyword argument" in rejection(
        model={"preset": "tiny-moe", "moe": {"experts": 4}}
    )


def test_a_dpo_job_resolves_its_dpo_section_and_round_trips() -> None:
    resolved = resolve(type="dpo", model={"base_model_id": "mdl_b"})
    assert resolved["sft"] is None and resolved["tokenizer"]["type"] == "model"
    assert resolved["dpo"]["beta"] == 0.1 and resolved["dpo"]["method"] == "full"
    assert resolved["training"]["lr"] == 1e-4
    lora = resolve(type="dpo", model={"base_model_id": "mdl_b"}, dpo={"method": "lora", "beta": 1})
    assert lora["dpo"]["lora"]["rank"] == 8 and lora["training"]["lr"] == 1e-3
    assert JobSpec(**lora).resolved() == lora


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"type": "dpo", "model": {"base_model_id": "mdl_b"}, "sft": {}}, "in 'dpo'"),
        ({"type": "sft", "model": {"base_model_id": "mdl_b"}, "dpo": {}}, "need type 'dpo'"),
        ({"type": "dpo"}, "base_model_id"),
        ({"type": "dpo", "model": {"base_model_id": "mdl_b"}, "dpo": {"beta": 0}}, "dpo.beta"),
        ({"type": "dpo", "model": {"base_model_id": "mdl_b"}, "dpo": {"rank": 4}}, "dpo.rank"),
    ],
)
def test_dpo_spec_errors_name_their_field(spec: dict[str, Any], named: str) -> None:
    assert named in rejection(**spec)


# ---------------------------------------------------------------------------- tensor parallel

LLAMA = {"arch": "llama", "n_layer": 2, "n_head": 8, "d_model": 128, "n_kv_head": 4}


def test_tensor_parallel_size_defaults_to_the_processes_of_a_node() -> None:
    spec = resolve(
        model=LLAMA,
        training={"batch_size": 12},
        resources={"nodes": 2, "processes_per_node": 4, "strategy": "fsdp+tp"},
    )
    assert spec["resources"]["tensor_parallel_size"] == 4
    # The 4 processes of a node read one micro-batch: 2 data-parallel groups share 12.
    assert spec["training"]["micro_batch_size"] == 6


def test_an_explicit_tensor_parallel_size_sets_the_data_parallel_groups() -> None:
    spec = resolve(
        model=LLAMA,
        training={"batch_size": 8},
        resources={"processes_per_node": 4, "strategy": "tp", "tensor_parallel_size": 2},
    )
    assert spec["resources"]["tensor_parallel_size"] == 2
    assert spec["training"]["micro_batch_size"] == 4


def _tp(processes: int, **resources: Any) -> dict[str, Any]:
    return {"strategy": "tp", "processes_per_node": processes, **resources}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"model": {"preset": "tiny"}, "resources": _tp(2)},
            "model.arch 'gpt2' has no tensor-parallel plan",
        ),
        (
            {"model": {**LLAMA, "n_head": 4, "n_kv_head": 1}, "resources": _tp(2)},
            "model.n_kv_head (1) must be divisible by resources.tensor_parallel_size (2)",
        ),
        (
            {
                "model": {"arch": "llama", "n_layer": 2, "n_head": 2, "d_model": 64},
                "resources": _tp(4),
            },
            "model.n_head (2) must be divisible by resources.tensor_parallel_size (4)",
        ),
        (
            {"model": {**LLAMA, "d_ff": 102}, "resources": _tp(4)},
            "model.d_ff (102) must be divisible by resources.tensor_parallel_size (4)",
        ),
        (
            {"model": {"preset": "tiny-moe"}, "resources": _tp(2, strategy="fsdp+tp")},
            "a mixture of experts (model.moe) cannot be split by tensor parallelism yet",
        ),
        (
            {"model": LLAMA, "resources": _tp(4, tensor_parallel_size=3)},
            "resources.tensor_parallel_size (3) must divide the number of processes",
        ),
        (
            {"model": LLAMA, "resources": _tp(2, strategy="ddp", tensor_parallel_size=2)},
            "resources.tensor_parallel_size (2) needs resources.strategy 'tp' or 'fsdp+tp'",
        ),
        (
            {"model": LLAMA, "resources": _tp(2, tensor_parallel_size=0)},
            "resources.tensor_parallel_size: Input should be greater than or equal to 1",
        ),
        (
            {
                "model": LLAMA,
                "training": {"batch_size": 6, "micro_batch_size": 2},
                "resources": _tp(4, tensor_parallel_size=2),
            },
            "multiple of training.micro_batch_size (2) x data-parallel groups (2)",
        ),
    ],
)
def test_tensor_parallel_errors_name_their_field(spec: dict[str, Any], message: str) -> None:
    assert message in rejection(**spec)


def test_the_default_evaluation_fits_the_largest_batch() -> None:
    assert resolve(training={"batch_size": 1_000_000})["training"]["eval_batches"] == 20
