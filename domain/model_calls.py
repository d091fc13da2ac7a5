"""Work that loads a model, run in the model worker processes.

Each function takes plain values and returns plain values: it crosses a process boundary.
A process keeps the few models it loaded last (`cached_model`), so repeated calls skip the
load. The chat-completions route streams tokens, so it uses that cache in the API process.
"""

from __future__ import annotations

import resource
import threading
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

_CACHE_SIZE = 4
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


def limit_memory(max_bytes: int) -> None:
    """Cap the worker's address space: an allocation past it fails instead of the host."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def _device(wanted: str) -> str:
    """The device a setting names, with "auto" meaning a GPU if there is one."""
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cached_model(folder: str, device: str) -> Any:
    """The model in `folder` ready for sampling on `device`, from this process's cache."""
    from trainer.sample import load_model

    key = f"{folder}@{device}"
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    loaded = load_model(folder, device=_device(device))
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def generate(folder: str, device: str, request: dict[str, Any]) -> dict[str, Any]:
    """Sample from the model in `folder`: a prompt's continuation or a chat reply; the
    trainer.sample.Completion as a dict, or {"error": code, "message": ...}."""
    from trainer import chat
    from trainer.sample import complete

    loaded = cached_model(folder, device)
    prompt, stop = request["prompt"], None
    if request["messages"] is not None:
        if loaded.tokenizer.token_to_id(chat.IM_END) is None:
            return {"error": "not_a_chat_model"}
        prompt = chat.render(request["messages"], add_generation_prompt=True)
        stop = chat.stop_ids(loaded.tokenizer)
    done = complete(
        loaded,
        prompt,
        max_new_tokens=request["max_new_tokens"],
        temperature=request["temperature"],
        top_k=request["top_k"],
        top_p=request["top_p"],
        seed=request["seed"],
        stop_ids=stop,
    )
    return asdict(done)


def check_loadable(folder: str) -> str | None:
    """Load a folder once to prove its files form a model; None, or what is wrong."""
    from trainer.sample import load_model

    try:
        load_model(folder)  # safetensors and JSON only: nothing is unpickled
    except MemoryError:
        raise
    except Exception as exc:
        return str(exc)
    return None
