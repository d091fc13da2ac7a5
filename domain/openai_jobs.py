"""OpenAI fine-tuning requests as trainyard jobs: the request mapped onto a JobSpec (so it is
validated like the native one), and what the OpenAI view of a job reports.

`learning_rate_multiplier` scales the method's native rate (full SFT 1e-4, LoRA 1e-3),
`batch_size` counts examples (OpenAI jobs train without packing unless `sft.packing` says
otherwise) and `n_epochs` counts passes over the training file. `"auto"` resolves to
1.0, the native batch size and 3 epochs.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from domain import jobs, models
from domain.errors import Invalid
from domain.orm import Job
from trainyard.ids import new_id
from trainyard.specs import LORA_LR, SFT_TRAINING_DEFAULTS, JobSpec

AUTO_EPOCHS = 3
NATIVE_SECTIONS = ("sft", "training", "resources")


def base_lr(spec: dict[str, Any]) -> float:
    """The method's native learning rate, which the multiplier scales."""
    lora = (spec.get("sft") or {}).get("method") == "lora"
    return LORA_LR if lora else float(SFT_TRAINING_DEFAULTS["lr"])


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
    if method != "supervised":
        raise _invalid(
            "method.type",
            f"{method!r} fine-tuning is not available on this server; use 'supervised'",
            "unsupported_method",
        )
    sections = {k: dict(native.get(k) or {}) for k in NATIVE_SECTIONS}
    sft, training = sections["sft"], sections["training"]
    if "epochs" in sft:
        raise _invalid("sft.epochs", "give hyperparameters.n_epochs instead")
    for name, field in (("batch_size", "batch_size"), ("lr", "learning_rate_multiplier")):
        if name in training and hyperparameters.get(field) not in (None, "auto"):
            raise _invalid(f"training.{name}", f"give hyperparameters.{field} or this, not both")
    sft["epochs"] = _number(hyperparameters.get("n_epochs"), AUTO_EPOCHS)
    sft.setdefault("packing", False)
    if hyperparameters.get("batch_size") not in (None, "auto"):
        training["batch_size"] = hyperparameters["batch_size"]
    multiplier = hyperparameters.get("learning_rate_multiplier")
    if "lr" not in training:
        training["lr"] = base_lr({"sft": sft}) * _number(multiplier, 1.0)
    training["seed"] = seed
    body: dict[str, Any] = {
        "type": "sft",
        "dataset_id": training_file,
        "model": {"base_model_id": base_model_id},
        "sft": sft,
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
    return jobs.create(
        session=session,
        project_id=project_id,
        spec=spec,
        idempotency_key=idempotency_key,
        default_gpu_bytes=default_gpu_bytes,
        columns={
            "id": job_id,
            # The trained model takes the job's name, so this name serves it everywhere.
            "name": fine_tuned_name(model, project_id, suffix, job_id),
            "suffix": suffix,
            "meta": metadata,
            "base_model": model,
        },
    )


def fine_tuned_name(base: str, project_id: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{project}:{suffix}:{job id}`, OpenAI's naming of a fine-tuned model."""
    return f"ft:{base}:{project_id}:{suffix or ''}:{job_id}"


def hyperparameters(job: Job, records: int | None) -> dict[str, Any]:
    """The job's resolved batch size, learning-rate multiplier and epochs."""
    spec = job.spec
    training = spec["training"]
    epochs = (spec.get("sft") or {}).get("epochs")
    if epochs is None and records:  # a native job counted in steps: its epochs, rounded up
        epochs = -(-training["max_steps"] * training["batch_size"] // records)
    return {
        "batch_size": training["batch_size"],
        "learning_rate_multiplier": round(training["lr"] / base_lr(spec), 6),
        "n_epochs": epochs,
    }
