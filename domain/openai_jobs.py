"""OpenAI fine-tuning requests as trainyard jobs: the request mapped onto a JobSpec (so it is
validated like the native one), and what the OpenAI view of a job reports.

`method.type` "supervised" makes an `sft` job and "dpo" a `dpo` job (preference pairs).
`learning_rate_multiplier` scales the method's native rate (full 1e-4, LoRA 1e-3),
`batch_size` counts examples, or pairs for DPO (OpenAI jobs train without packing unless
the native section's `packing` says otherwise), `n_epochs` counts passes over the training
file and `beta` is DPO's. `"auto"` resolves to 1.0, the native batch size, 3 epochs and a
beta of 0.1.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from domain import jobs, models
from domain.errors import Conflict, Invalid
from domain.orm import Job
from trainyard.ids import new_id
from trainyard.specs import (
    LORA_LR,
    NAME_LENGTH,
    SFT_TRAINING_DEFAULTS,
    DpoSpec,
    JobSpec,
    tuning,
)

AUTO_EPOCHS = 3
NATIVE_SECTIONS = ("sft", "dpo", "training", "resources")
JOB_TYPES = {"supervised": "sft", "dpo": "dpo"}  # OpenAI's method.type -> the job's type
FILE_FIELDS = {"dataset_id": "training_file", "validation.dataset_id": "validation_file"}


def base_lr(method: str | None) -> float:
    """The native learning rate of a fine-tuning method ("full" or "lora"), which the
    multiplier scales."""
    return LORA_LR if method == "lora" else float(SFT_TRAINING_DEFAULTS["lr"])


def _invalid(field: str, message: str, code: str = "invalid_request") -> Invalid:
    return Invalid(code, f"{field}: {message}", [{"field": field, "message": message}])


def _number(value: Any, auto: Any) -> Any:
    return auto if value is None or value == "auto" else value


def _seed(seed: int | None, idempotency_key: str | None) -> int:
    """The caller's seed; else one drawn at random (from the key, so a retry asks the same)."""
    if seed is not None:
        return seed
    if idempotency_key:
        return int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:4]) >> 1
    return secrets.randbelow(2**31)


def spec_for(
    *,
    base_model_id: str,
    training_file: str,
    validation_file: str | None,
    method: str,
    hyperparameters: dict[str, Any],
    seed: int,
    native: dict[str, Any],
) -> JobSpec:
    """The native JobSpec for an OpenAI fine-tuning request; errors name the request field."""
    if method not in JOB_TYPES:
        raise _invalid(
            "method.type",
            f"{method!r} fine-tuning is not available on this server; use 'supervised' or 'dpo'",
            "unsupported_method",
        )
    kind = JOB_TYPES[method]
    sections = {k: dict(native.get(k) or {}) for k in NATIVE_SECTIONS}
    sft, training = sections[kind], sections["training"]
    other = "dpo" if kind == "sft" else "sft"
    if native.get(other) is not None:
        raise _invalid(other, f"a {method!r} job takes its settings in {kind!r}")
    if "epochs" in sft:
        raise _invalid(f"{kind}.epochs", "give hyperparameters.n_epochs instead")
    if kind == "dpo":
        if "beta" in sft and hyperparameters.get("beta") not in (None, "auto"):
            raise _invalid("dpo.beta", "give hyperparameters.beta or this, not both")
        sft.setdefault("beta", _number(hyperparameters.get("beta"), DpoSpec().beta))
    for name, field in (("batch_size", "batch_size"), ("lr", "learning_rate_multiplier")):
        if name in training and hyperparameters.get(field) not in (None, "auto"):
            raise _invalid(f"training.{name}", f"give hyperparameters.{field} or this, not both")
    sft["epochs"] = _number(hyperparameters.get("n_epochs"), AUTO_EPOCHS)
    sft.setdefault("packing", False)
    if hyperparameters.get("batch_size") not in (None, "auto"):
        training["batch_size"] = hyperparameters["batch_size"]
    multiplier = hyperparameters.get("learning_rate_multiplier")
    if "lr" not in training:
        training["lr"] = base_lr(sft.get("method")) * _number(multiplier, 1.0)
    training["seed"] = seed
    body: dict[str, Any] = {
        "type": kind,
        "dataset_id": training_file,
        "model": {"base_model_id": base_model_id},
        kind: sft,
        "training": training,
    }
    if sections["resources"]:
        body["resources"] = sections["resources"]
    if validation_file:
        body["validation"] = {"dataset_id": validation_file}
    try:
        return JobSpec.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        raise _invalid(field, message) from exc


def create(
    *,
    session: Session,
    project_id: str,
    model: str,
    training_file: str,
    validation_file: str | None,
    suffix: str | None,
    seed: int | None,
    metadata: dict[str, str] | None,
    method: str,
    hyperparameters: dict[str, Any],
    native: dict[str, Any],
    idempotency_key: str | None,
    default_gpu_bytes: int,
) -> tuple[Job, bool]:
    """Queue a fine-tuning job from an OpenAI request; (job, created)."""
    base = models.resolve(session=session, project_id=project_id, ref=model)
    spec = spec_for(
        base_model_id=base.id,
        training_file=training_file,
        validation_file=validation_file,
        method=method,
        hyperparameters=hyperparameters,
        seed=_seed(seed, idempotency_key),
        native=native,
    )
    job_id = new_id("job")
    name = fine_tuned_name(base_of(model), project_id, suffix, job_id)
    if len(name) > NAME_LENGTH:
        raise _invalid(
            "model",
            f"the fine-tuned model's name would be {len(name)} characters, more than "
            f"{NAME_LENGTH}; name the base model by its id",
        )
    try:
        return jobs.create(
            session=session,
            project_id=project_id,
            spec=spec,
            idempotency_key=idempotency_key,
            default_gpu_bytes=default_gpu_bytes,
            columns={
                "id": job_id,
                # The trained model takes the job's name, so this name serves it everywhere.
                "name": name,
                "suffix": suffix,
                "meta": metadata,
                "base_model": model,
            },
        )
    except Conflict as exc:
        # A file the method cannot use (chat examples for DPO): name the request's field.
        field = exc.details.get("field") if isinstance(exc.details, dict) else None
        if field not in FILE_FIELDS:
            raise
        message = exc.message.replace(f"{field}:", f"{FILE_FIELDS[field]}:", 1)
        raise Conflict(exc.code, message, {**exc.details, "field": FILE_FIELDS[field]}) from exc


def fine_tuned_name(base: str, project_id: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{project}:{suffix}:{job id}`, OpenAI's naming of a fine-tuned model."""
    return f"ft:{base}:{project_id}:{suffix or ''}:{job_id}"


def base_of(model: str) -> str:
    """The base a model name names: an `ft:` name's own base (tuning a fine-tuned model
    keeps the first base in the name, as OpenAI does), any other name as it is."""
    if not model.startswith("ft:"):
        return model
    parts = model[3:].rsplit(":", 3)  # base (may hold ':'), project, suffix, job id
    return parts[0] if len(parts) == 4 and parts[0] else model


def model_name(job: Job) -> str:
    """The job's model in OpenAI's naming, the same before and after it finishes: the name
    the OpenAI route gave it, or one built alike for a job created natively."""
    if job.name and job.name.startswith("ft:"):
        return job.name
    base = job.base_model or str(job.spec["model"].get("base_model_id"))
    return fine_tuned_name(base_of(base), job.project_id, job.suffix, job.id)


def checkpoint_name(job: Job, step: int) -> str:
    """`{model name}:ckpt-step-{step}`, OpenAI's id of a checkpoint that serves requests."""
    return f"{model_name(job)}:ckpt-step-{step}"


def hyperparameters(job: Job, records: int | None) -> dict[str, Any]:
    """The job's resolved batch size, learning-rate multiplier and epochs (and DPO's beta)."""
    spec = job.spec
    training, settings = spec["training"], tuning(spec)
    epochs = settings.get("epochs")
    if epochs is None and records:  # a native job counted in steps: its epochs, rounded up
        epochs = -(-training["max_steps"] * training["batch_size"] // records)
    out = {
        "batch_size": training["batch_size"],
        "learning_rate_multiplier": round(training["lr"] / base_lr(settings.get("method")), 6),
        "n_epochs": epochs,
    }
    if spec["type"] == "dpo":
        out["beta"] = settings["beta"]
    return out
