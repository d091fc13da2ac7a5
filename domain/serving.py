"""What a model reference samples from: a model (by id or name, `ft:...` names included),
or a fine-tuning checkpoint by its OpenAI id `{fine-tuned model}:ckpt-step-{step}`.

A checkpoint is exported into a model folder of its own the first time it is sampled (in a
model worker: see model_calls.model_folder), from the checkpoint the trainer wrote and the
run.json of the attempt that wrote it; every path comes from ids, never from the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import models, openai_jobs
from domain.errors import NotFound
from domain.orm import Checkpoint, Job, Model
from trainyard.settings import get_settings
from trainyard.specs import FINE_TUNING
from trainyard.storage import Storage

CHECKPOINT_REF = re.compile(
    r"^(?P<model>ft:.+:(?P<job>job_[0-9a-z]+)):ckpt-step-(?P<step>\d{1,9})$"
)


@dataclass
class Served:
    """A reference resolved: the model row, or the job and checkpoint it names, and the
    target a model worker loads (plain values: it crosses a process boundary)."""

    ref: str
    model: Model | None
    job: Job | None
    checkpoint: Checkpoint | None
    target: dict[str, Any]


def _checkpoint(session: Session, project_id: str, ref: str) -> tuple[Job, Checkpoint] | None:
    """The job and checkpoint a checkpoint id names in this project, or None."""
    found = CHECKPOINT_REF.fullmatch(ref)
    if found is None:
        return None
    job = session.get(Job, found["job"])
    if (
        job is None
        or job.project_id != project_id
        or job.type not in FINE_TUNING
        or openai_jobs.model_name(job) != found["model"]
    ):
        return None
    checkpoint = session.execute(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == int(found["step"]))
    ).scalar()
    return None if checkpoint is None else (job, checkpoint)


def resolve(*, session: Session, storage: Storage, project_id: str, ref: str) -> Served:
    """What `ref` samples from in this project; a 404 (`model_not_found` on the OpenAI
    routes) for anything else, a checkpoint of another project included."""
    named = _checkpoint(session, project_id, ref)
    if named is None:
        if CHECKPOINT_REF.fullmatch(ref):
            raise NotFound("model", ref)
        model = models.resolve(session=session, project_id=project_id, ref=ref)
        target: dict[str, Any] = {
            "folder": models.folder(storage=storage, model=model),
            "checkpoint": None,
        }
        return Served(ref, model, None, None, target)
    job, checkpoint = named
    folder = storage.checkpoint_model_dir(job.id, checkpoint.step)
    step_dir = storage.checkpoint_step_dir(job.id, checkpoint.step)
    if not (folder / "config.json").exists() and not step_dir.is_dir():
        raise NotFound(
            "model",
            ref,
            f"checkpoint {ref}: its weights are no longer kept (a job keeps its latest "
            f"{get_settings().keep_checkpoints} checkpoints and its best)",
        )
    target = {
        "folder": str(folder),
        "checkpoint": {
            "step_dir": str(step_dir),
            "run_config": str(storage.attempt_dir(job.id, checkpoint.attempt) / "run.json"),
        },
    }
    return Served(ref, None, job, checkpoint, target)
