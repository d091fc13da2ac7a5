"""Work that loads a model, run in the model worker processes (api.model_pool).

Each function takes plain values and returns plain values: it crosses a process boundary.
A process keeps the few models it loaded last (`cached_model`), so repeated calls skip the
load. A target (domain.serving) names a model folder, and for a fine-tuning checkpoint how
to export that folder first. A streamed call puts its pieces in a queue as they come.
"""

from __future__ import annotations

import fcntl
import os
import resource
import threading
from collections import OrderedDict
from dataclasses import asdict
from typing import Any, Protocol


class Sink(Protocol):
    """Where a streamed call puts its pieces (a multiprocessing manager's queue)."""

    def put(self, item: Any) -> None: ...


_CACHE_SIZE = 4
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


def limit_memory(max_bytes: int, device: str = "cpu") -> None:
    """Cap the worker's address space: an allocation past it fails instead of the host.

    Not where models run on a GPU: CUDA reserves far more address space than it ever uses,
    so a cap that bounds the host's memory makes its initialisation fail. There the card's
    memory bounds a model, and imports were size-checked from their headers.
    """
    if _device(device) == "cuda":
        return
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


def model_folder(target: dict[str, Any]) -> str:
    """The folder of a target, a checkpoint's exported first if it is not yet (once: a
    lock keeps two workers from exporting the same checkpoint at once)."""
    folder: str = target["folder"]
    source = target["checkpoint"]
    if source is None or os.path.exists(os.path.join(folder, "config.json")):
        return folder
    from trainer.checkpoint_export import export_checkpoint
    from trainer.config import RunConfig

    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(folder, "config.json")):
            run = RunConfig.load(source["run_config"])
            export_checkpoint(run, source["step_dir"], folder)
    return folder


def generate(target: dict[str, Any], device: str, request: dict[str, Any]) -> dict[str, Any]:
    """Sample from a target's model: a prompt's continuation or a chat reply; the
    trainer.sample.Completion as a dict, or {"error": code, "message"?}."""
    from trainer import chat
    from trainer.sample import complete

    try:
        folder = model_folder(target)
    except (OSError, ValueError, RuntimeError) as exc:
        return {"error": "checkpoint_unavailable", "message": str(exc)}
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


def chat(
    target: dict[str, Any], device: str, request: dict[str, Any], sink: Sink | None = None
) -> dict[str, Any]:
    """Chat replies from a target's model, one per `n` (see domain.chat_completions):
    {"choices": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}]}, or
    {"error": code, "message"?}. With a sink, first {"ready": True} once the model is loaded, then
    {"index", "delta"} as text comes and {"index", "finish_reason", ...} as a reply ends."""
    from domain import chat_completions

    try:
        folder = model_folder(target)
    except (OSError, ValueError, RuntimeError) as exc:
        return {"error": "checkpoint_unavailable", "message": str(exc)}
    loaded = cached_model(folder, device)
    if not chat_completions.can_chat(loaded):
        return {"error": "not_a_chat_model"}
    if sink is not None:
        sink.put({"ready": True})
    seed = request["seed"]
    choices = []
    for index in range(request["n"]):
        reply = chat_completions.Reply()
        for delta in chat_completions.stream_reply(
            loaded,
            messages=request["messages"],
            max_tokens=request["max_tokens"],
            temperature=request["temperature"],
            top_p=request["top_p"],
            seed=None if seed is None else seed + index,
            stop=request["stop"],
            reply=reply,
        ):
            if sink is not None:
                sink.put({"index": index, "delta": delta})
        done = {
            "text": reply.text,
            "finish_reason": reply.finish_reason,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        }
        if sink is not None:
            sink.put({"index": index, **{k: v for k, v in done.items() if k != "text"}})
        choices.append(done)
    return {"choices": choices}


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
