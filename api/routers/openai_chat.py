"""`POST /v1/chat/completions`, OpenAI-compatible, for any chat model of the project (by id
or name, `ft:...` names and checkpoint ids included); `stream: true` answers server-sent
events.

Replies are sampled in the model worker pool (api.model_pool), never in the API process: a
full pool is a 429 with Retry-After before anything is sent. A stream starts once the
worker has loaded the model, so a model that cannot chat is still a plain 400; then each
piece of text goes out as the worker samples it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

from api.deps import ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError
from api.model_pool import Streamed, get_pool
from api.openai_schemas import ChatCompletionIn, ChatCompletionOut, ChoiceOut, Usage
from domain import model_calls, serving
from domain.errors import Conflict, DomainError, Invalid

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/chat", tags=["openai"])
DEFAULT_MAX_TOKENS = 256


def _request(body: ChatCompletionIn) -> dict[str, Any]:
    """The sampling request as plain values, for a model worker."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return {
        "messages": [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ],
        "max_tokens": body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": body.top_p,
        "stop": stop,
        "seed": body.seed,
        "n": body.n or 1,
    }


def _refusal(answer: dict[str, Any], ref: str) -> DomainError:
    """The error a worker's {"error": code} stands for."""
    if answer.get("error") == "not_a_chat_model":
        return Invalid(
            "not_a_chat_model",
            f"model {ref} has no chat template: fine-tune it on chat data first",
            {"field": "model"},
        )
    return Conflict(
        str(answer.get("error", "no_reply")),
        f"model {ref} cannot be loaded: {answer.get('message', '')}",
        {"field": "model"},
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@router.post("/completions", response_model=ChatCompletionOut)
async def chat_completions_route(
    body: ChatCompletionIn,
    project_id: ProjectDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Any:
    """Answer a conversation: one choice per `n`, token usage, `stop` or `length`."""
    served = await run_in_threadpool(
        serving.resolve, session=session, storage=storage, project_id=project_id, ref=body.model
    )
    args = (served.target, settings.generate_device, _request(body))
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.stream:
        stream = await get_pool().stream(project_id, model_calls.chat, *args)
        try:
            first = await anext(stream, None)
            if first is None:  # the worker answered without loading: a refusal
                raise _refusal(stream.result, body.model)
        except BaseException:
            stream.close()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(stream, body.model, completion_id, created, include_usage)
        return EventSourceResponse(_events(chunks, stream), ping=15)
    answer = await get_pool().run(project_id, model_calls.chat, *args)
    if "error" in answer:
        raise _refusal(answer, body.model)
    replies = answer["choices"]
    return ChatCompletionOut(
        id=completion_id,
        created=created,
        model=body.model,
        choices=[
            ChoiceOut(
                index=index,
                message={"role": "assistant", "content": reply["text"], "refusal": None},
                finish_reason=reply["finish_reason"],
            )
            for index, reply in enumerate(replies)
        ],
        usage=Usage(
            **_usage(replies[0]["prompt_tokens"], sum(r["completion_tokens"] for r in replies))
        ),
    )


async def _chunks(
    stream: Streamed, model: str, completion_id: str, created: int, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    """The stream's chunks from the worker's pieces: per choice a role, the content deltas
    and a finish reason; then the usage if asked for."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }

    prompt_tokens = completion_tokens = 0
    opened: set[int] = set()
    async for piece in stream:
        index = piece["index"]
        if index not in opened:
            opened.add(index)
            role = {"role": "assistant", "content": ""}
            yield chunk([{"index": index, "delta": role, "finish_reason": None}])
        if "delta" in piece:
            delta = {"content": piece["delta"]}
            yield chunk([{"index": index, "delta": delta, "finish_reason": None}])
            continue
        prompt_tokens = piece["prompt_tokens"]
        completion_tokens += piece["completion_tokens"]
        yield chunk([{"index": index, "delta": {}, "finish_reason": piece["finish_reason"]}])
    if include_usage:
        yield chunk([], usage=_usage(prompt_tokens, completion_tokens))


async def _events(
    chunks: AsyncIterator[dict[str, Any]], stream: Streamed
) -> AsyncIterator[dict[str, str]]:
    """Server-sent events: one `data:` per chunk, an error object if the call fails
    midway, and `data: [DONE]` at the end. A client that goes away stops the call."""
    try:
        async for item in chunks:
            yield {"data": json.dumps(item)}
    except Exception as exc:  # the call failed midway (its time or memory ran out)
        if isinstance(exc, ApiError):
            message, code = exc.message, exc.code
        else:
            log.exception("chat completion failed", exc_info=exc)
            message, code = "the model call failed", "internal_error"
        error = {"message": message, "type": "server_error", "param": None, "code": code}
        yield {"data": json.dumps({"error": error})}
    finally:
        stream.close()
    yield {"data": "[DONE]"}
