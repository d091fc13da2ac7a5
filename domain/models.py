"""Models: show, serve files, and sample text without blocking the event loop."""

from __future__ import annotations

import json
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.access import owned
from domain.errors import BadInput, Invalid, NotFound
from domain.orm import Model
from domain.uploads import Upload
from trainyard.ids import new_id
from trainyard.settings import get_settings
from trainyard.storage import Storage

DOWNLOADABLE = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "generation_config.json",
    "tokenizer_config.json",
)
_CACHE_SIZE = 4
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


def get(*, session: Session, project_id: str, model_id: str) -> Model:
    """A model of the caller's project, or a 404."""
    return owned(session, Model, model_id, project_id, "model")


def resolve(*, session: Session, project_id: str, ref: str) -> Model:
    """A model of the project by id, or else by name (the newest of that name), or a 404."""
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


def _generate_device() -> str:
    """Where the API runs generation: the setting, with "auto" meaning a GPU if there is one."""
    wanted = get_settings().generate_device
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def loaded(storage: Storage, model_id: str) -> Any:
    """The model ready for sampling, from a small per-process cache."""
    from trainer.sample import load_model  # torch loads on first use, not at API start-up

    with _cache_lock:
        if model_id in _cache:
            _cache.move_to_end(model_id)
            return _cache[model_id]
    fresh = load_model(str(storage.model_dir(model_id)), device=_generate_device())
    with _cache_lock:
        _cache[model_id] = fresh
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return fresh


def generate(
    *,
    storage: Storage,
    model: Model,
    prompt: str | None,
    messages: list[dict[str, str]] | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
) -> Any:
    """Sample a continuation of a prompt, or a chat model's reply to messages (blocking:
    call it from a worker thread); a trainer.sample.Completion."""
    from trainer import chat
    from trainer.sample import complete

    loaded_model = loaded(storage, model.id)
    stop = None
    if messages is not None:
        if loaded_model.tokenizer.token_to_id(chat.IM_END) is None:
            raise Invalid(
                "not_a_chat_model",
                f"model {model.id} has no chat template; send a plain prompt instead",
            )
        prompt = chat.render(messages, add_generation_prompt=True)
        stop = chat.stop_ids(loaded_model.tokenizer)
    assert prompt is not None
    return complete(
        loaded_model,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_ids=stop,
    )


IMPORT_PARTS = {
    "config": "config.json",
    "weights": "model.safetensors",
    "tokenizer": "tokenizer.json",
}


def import_folder(
    *,
    session: Session,
    storage: Storage,
    project_id: str,
    uploads: dict[str, Upload],
    name: str | None,
) -> Model:
    """Check a Hugging Face folder (Llama or GPT-2; safetensors only) and store it as a model.

    Blocking (it loads the weights once to prove they fit the architecture): call it from a
    worker thread.
    """
    from trainer.sample import load_model

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
        if not isinstance(config, dict) or config.get("model_type") not in ("gpt2", "llama"):
            kind = config.get("model_type") if isinstance(config, dict) else None
            raise Invalid(
                "invalid_model", f"config: model_type must be 'gpt2' or 'llama', got {kind!r}"
            )
        try:
            load_model(str(staging))  # safetensors and JSON only: nothing is unpickled
        except Exception as exc:
            raise Invalid(
                "invalid_model",
                f"the files do not form a usable model: {exc}",
            ) from exc
        target = storage.model_dir(model_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(target)
    finally:
        for upload in uploads.values():
            upload.path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    files = [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(target.iterdir())]
    model = Model(
        id=model_id,
        project_id=project_id,
        job_id=None,
        name=name,
        arch=str(config["model_type"]),
        config=config,
        files=files,
    )
    session.add(model)
    session.commit()
    return model
