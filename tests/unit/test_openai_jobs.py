"""OpenAI fine-tuning requests mapped onto the native JobSpec: resolved hyperparameters,
native options through `extra_body`, and errors that name the request field; OpenAI's
names of fine-tuned models and of their checkpoints."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import Invalid
from domain.openai_jobs import AUTO_EPOCHS, _seed, base_of, checkpoint_name, model_name, spec_for
from domain.orm import Job
from domain.serving import CHECKPOINT_REF


def spec(hyper: dict[str, Any] | None = None, native: dict[str, Any] | None = None) -> Any:
    return spec_for(
        base_model_id="mdl_x",
        training_file="ds_x",
        validation_file=None,
        method="supervised",
        hyperparameters=hyper or {},
        seed=5,
        native=native or {},
    )


def test_auto_resolves_to_numbers_and_examples_are_not_packed() -> None:
    s = spec({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"})
    assert s.sft is not None and s.sft.epochs == AUTO_EPOCHS and s.sft.packing is False
    assert s.training.batch_size == 12 and s.training.lr == pytest.approx(1e-4)
    assert s.training.seed == 5


def test_the_multiplier_scales_the_methods_native_rate() -> None:
    assert spec({"learning_rate_multiplier": 3}).training.lr == pytest.approx(3e-4)
    lora = spec({"learning_rate_multiplier": 0.5}, {"sft": {"method": "lora"}})
    assert lora.training.lr == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("hyper", "native", "field"),
    [
        ({}, {"sft": {"epochs": 2}}, "sft.epochs"),
        ({"batch_size": 4}, {"training": {"batch_size": 8}}, "training.batch_size"),
        ({}, {"sft": {"lora": {"rank": 4}}}, "sft"),
        ({}, {"training": {"nonsense": 1}}, "training.nonsense"),
        ({}, {"resources": {"processes_per_node": 0}}, "resources.processes_per_node"),
    ],
)
def test_bad_options_name_their_field(
    hyper: dict[str, Any], native: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as err:
        spec(hyper, native)
    assert err.value.details[0]["field"] == field


def dpo(hyper: dict[str, Any] | None = None, native: dict[str, Any] | None = None) -> Any:
    return spec_for(
        base_model_id="mdl_x",
        training_file="ds_x",
        validation_file=None,
        method="dpo",
        hyperparameters=hyper or {},
        seed=1,
        native=native or {},
    )


def test_dpo_makes_a_dpo_job_with_its_beta() -> None:
    s = dpo({"beta": 0.3, "n_epochs": 2, "learning_rate_multiplier": 2})
    assert s.type == "dpo" and s.sft is None and s.dpo is not None
    assert s.dpo.beta == 0.3 and s.dpo.epochs == 2 and s.dpo.packing is False
    assert s.training.lr == pytest.approx(2e-4)
    auto = dpo({"beta": "auto"}, {"dpo": {"method": "lora"}})
    assert auto.dpo is not None and auto.dpo.beta == 0.1 and auto.training.lr == pytest.approx(1e-3)
    assert dpo({}, {"dpo": {"beta": 0.5}}).dpo.beta == 0.5  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("hyper", "native", "field"),
    [
        ({}, {"sft": {"method": "lora"}}, "sft"),
        ({"beta": 0.2}, {"dpo": {"beta": 0.3}}, "dpo.beta"),
        ({}, {"dpo": {"beta": -1}}, "dpo.beta"),
        ({}, {"dpo": {"epochs": 2}}, "dpo.epochs"),
    ],
)
def test_bad_dpo_options_name_their_field(
    hyper: dict[str, Any], native: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as err:
        dpo(hyper, native)
    assert err.value.details[0]["field"] == field


def test_reinforcement_is_refused_by_name() -> None:
    with pytest.raises(Invalid) as err:
        spec_for(
            base_model_id="m",
            training_file="f",
            validation_file=None,
            method="reinforcement",
            hyperparameters={},
            seed=1,
            native={},
        )
    assert err.value.code == "unsupported_method"
    assert err.value.details[0]["field"] == "method.type"


def test_a_retry_with_the_same_key_draws_the_same_seed() -> None:
    assert _seed(None, "k1") == _seed(None, "k1") != _seed(None, "k2")
    assert _seed(9, "k1") == 9 and 0 <= _seed(None, None) < 2**31


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("mdl_x", "mdl_x"),
        ("org/model:v2", "org/model:v2"),
        ("ft:mdl_x:prj_a:rev:job_1", "mdl_x"),
        ("ft:org/model:v2:prj_a::job_1", "org/model:v2"),  # ':' and '/' in the base
        ("ft:odd", "ft:odd"),  # not a fine-tuned name: kept as given
    ],
)
def test_a_fine_tuned_name_keeps_its_first_base(model: str, base: str) -> None:
    assert base_of(model) == base


def test_a_jobs_model_and_checkpoints_are_named_alike_by_either_api() -> None:
    spec = {"model": {"base_model_id": "mdl_b"}}
    tuned = Job(id="job_1", project_id="prj_a", name="ft:org/m:v1:prj_a:rev:job_1", spec=spec)
    native = Job(id="job_2", project_id="prj_a", name="my run", spec=spec, suffix=None)
    assert model_name(tuned) == "ft:org/m:v1:prj_a:rev:job_1"
    assert model_name(native) == "ft:mdl_b:prj_a::job_2"
    name = checkpoint_name(tuned, 40)
    assert name == "ft:org/m:v1:prj_a:rev:job_1:ckpt-step-40"
    found = CHECKPOINT_REF.fullmatch(name)
    assert found and found["model"] == model_name(tuned) and found["job"] == "job_1"
    assert found["step"] == "40"
    for other in ("ft:org/m:v1:prj_a:rev:job_1", "mdl_x:ckpt-step-4", f"{name}0000000000"):
        assert CHECKPOINT_REF.fullmatch(other) is None
