"""Models: show, serve files, and check an imported Hugging Face folder before it is kept."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.access import owned
from domain.errors import BadInput, Invalid, NotFound
from domain.orm import Model
from domain.uploads import Upload
from trainyard.ids import new_id
from trainyard.storage import Storage

DOWNLOADABLE = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "generation_config.json",
    "tokenizer_config.json",
)


def get(*, session: Session, project_id: str, model_id: str) -> Model:
    """A model of the caller's project, or a 404."""
    return owned(session, Model, model_id, project_id, "model")


def resolve(*, session: Session, project_id: str, ref: str) -> Model:
    """A model of the project by id, or else by name (the newest of that name), or a 404."""
    if len(ref) > 255 or "\x00" in ref:  # no id or name is like this: spare the database
        raise NotFound("model", ref[:255])
    by_id = session.get(Model, ref)
    if by_id is not None and by_id.project_id == project_id:
        return by_id
    by_name = session.execute(
        select(Model)
        .where(Model.project_id == project_id, Model.name == ref)
        .order_by(Model.id.desc())
        .limit(1)
    ).scalar()
    if by_name is None:
        raise NotFound("model", ref)
    return by_name


def file_path(*, storage: Storage, model: Model, name: str) -> Path:
    """The path of one downloadable file; names outside the fixed list are a 404."""
    if name not in DOWNLOADABLE or name not in {f["name"] for f in model.files}:
        raise NotFound("file", name)
    return storage.model_dir(model.id) / name


def folder(*, storage: Storage, model: Model) -> str:
    """Where the model's files are, for a model worker to load."""
    return str(storage.model_dir(model.id))


IMPORT_PARTS = {
    "config": "config.json",
    "weights": "model.safetensors",
    "tokenizer": "tokenizer.json",
}


MAX_POSITIONS = 131_072  # the longest context a job may train with
MODEL_TYPES = ("gpt2", "llama", "mixtral")  # the config.json model_type values we can load


@dataclass
class Staged:
    """An import's checked files, waiting in a staging folder for the row that names them."""

    model_id: str
    folder: Path
    config: dict[str, Any]


def _check_sizes(staging: Path, config: dict[str, Any], max_bytes: int) -> None:
    """Refuse, before anything is loaded, a config whose sizes the weights do not back.

    The weights' header alone is read (safetensors validates its offsets against the file);
    a model is built from the config, so its sizes must be bounded and match the weights.
    """
    from safetensors import safe_open

    from trainer.hf_config import model_config_from_hf
    from trainer.sizing import param_count

    try:
        cfg = model_config_from_hf(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise Invalid("invalid_model", f"config: {exc}") from exc
    if cfg.seq_len > MAX_POSITIONS:
        raise Invalid(
            "invalid_model",
            f"config: {cfg.seq_len} positions; at most {MAX_POSITIONS} are supported",
        )
    try:
        with safe_open(str(staging / "model.safetensors"), framework="numpy") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except Exception as exc:
        raise Invalid("invalid_model", f"weights: not a valid safetensors file ({exc})") from exc
    wanted = param_count(cfg)
    if wanted * 4 > max_bytes:
        raise Invalid(
            "model_too_large",
            f"config: {wanted:,} parameters need {wanted * 4:,} bytes in float32, more than "
            f"the limit of {max_bytes:,}",
            {"parameters": wanted, "limit_bytes": max_bytes},
        )
    if wanted > stored * 1.05 + 1024:
        raise Invalid(
            "invalid_model",
            f"config: its sizes make {wanted:,} parameters, but the weights hold {stored:,}",
            {"config_parameters": wanted, "weight_elements": stored},
        )


def stage_import(*, storage: Storage, uploads: dict[str, Upload], max_bytes: int) -> Staged:
    """Check a Hugging Face folder's files (Llama or GPT-2; safetensors only) without
    loading them, in a staging folder. The caller proves them loadable in a model worker,
    then commits or discards."""
    model_id = new_id("mdl")
    staging = storage.uploads_tmp() / f"import-{model_id}"
    staging.mkdir()
    try:
        for part, filename in IMPORT_PARTS.items():
            if uploads[part].size == 0:
                raise BadInput("empty_file", f"{part}: the uploaded {filename} is empty")
            uploads[part].path.replace(staging / filename)
        try:
            config = json.loads((staging / "config.json").read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid("invalid_model", f"config: not valid JSON ({exc})") from exc
        if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
            kind = config.get("model_type") if isinstance(config, dict) else None
            raise Invalid(
                "invalid_model",
                f"config: model_type must be 'gpt2', 'llama' or 'mixtral', got {kind!r}",
            )
        _check_sizes(staging, config, max_bytes)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        for upload in uploads.values():
            upload.path.unlink(missing_ok=True)
    return Staged(model_id, staging, config)


def discard(staged: Staged) -> None:
    """Remove a staged import."""
    shutil.rmtree(staged.folder, ignore_errors=True)


def commit_import(
    *, session: Session, storage: Storage, project_id: str, staged: Staged, name: str | None
) -> Model:
    """Record a checked import, then move its files into place (only after the commit)."""
    files = [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(staged.folder.iterdir())]
    model = Model(
        id=staged.model_id,
        project_id=project_id,
        job_id=None,
        name=name,
        arch=str(staged.config["model_type"]),
        config=staged.config,
        files=files,
    )
    session.add(model)
    try:
        session.commit()
    except BaseException:
        discard(staged)
        raise
    target = storage.model_dir(model.id)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.folder.replace(target)
    except OSError:
        session.delete(model)
        session.commit()
        discard(staged)
        raise
    return model
