"""`POST /v1/chat/completions`, OpenAI-compatible, for any chat model of the project (by id
or name, `ft:...` names included); `stream: true` answers server-sent events."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import iterate_in_threadpool

from api.deps import ProjectDep, SessionDep, StorageDep
from api.openai_schemas import ChatCompletionIn, ChatCompletionOut, ChoiceOut, Usage
from domain import chat_completions, models
from domain.errors import DomainError
from domain.orm import Model
from trainyard.storage import Storage

router = APIRouter(prefix="/v1/chat", tags=["openai"])
DEFAULT_MAX_TOKENS = 256


def _options(body: ChatCompletionIn, storage: Storage, model: Model) -> dict[str, Any]:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return {
        "storage": storage,
        "model": model,
        "messages": [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ],
        "max_tokens": body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": body.top_p,
        "stop": stop,
    }


def _seed(body: ChatCompletionIn, index: int) -> int | None:
    return None if body.seed is None else body.seed + index


@router.post("/completions", response_model=ChatCompletionOut)
async def chat_completions_route(
    body: ChatCompletionIn, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> Any:
    """Answer a conversation: one choice per `n`, token usage, `stop` or `length`."""
    model = models.resolve(session=session, project_id=project_id, ref=body.model)
    await run_in_threadpool(chat_completions.check_chat_model, storage=storage, model=model)
    options = _options(body, storage, model)
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(body, options, completion_id, created, include_usage)
        return EventSourceResponse(_events(chunks), ping=15)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index in range(body.n or 1):
        reply = await run_in_threadpool(
            chat_completions.complete_reply, seed=_seed(body, index), **options
        )
        prompt_tokens = reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        choices.append(
            ChoiceOut(
                index=index,
                message={"role": "assistant", "content": reply.text, "refusal": None},
                finish_reason=reply.finish_reason,
            )
        )
    return ChatCompletionOut(
        id=completion_id,
        created=created,
        model=body.model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


def _chunks(
    body: ChatCompletionIn,
    options: dict[str, Any],
    completion_id: str,
    created: int,
    include_usage: bool,
) -> Iterator[dict[str, Any]]:
    """The stream's chunks: a role, the content deltas and a finish reason per choice, then
    the usage if asked for (blocking: iterate it in a worker thread)."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": choices,
            **extra,
        }

    prompt_tokens = completion_tokens = 0
    for index in range(body.n or 1):
        yield chunk(
            [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )
        reply = chat_completions.Reply()
        for delta in chat_completions.stream_reply(seed=_seed(body, index), reply=reply, **options):
            yield chunk([{"index": index, "delta": {"content": delta}, "finish_reason": None}])
        prompt_tokens = reply.prompt_tokens
        completion_tokens += reply.completion_tokens
        yield chunk([{"index": index, "delta": {}, "finish_reason": reply.finish_reason}])
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield chunk([], usage=usage)


async def _events(chunks: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    """Server-sent events: one `data:` per chunk, an error object if sampling fails, and
    `data: [DONE]` at the end."""
    try:
        async for item in iterate_in_threadpool(chunks):
            yield {"data": json.dumps(item)}
    except DomainError as exc:
        error = {
            "message": exc.message,
            "type": "invalid_request_error",
            "param": None,
            "code": exc.code,
        }
        yield {"data": json.dumps({"error": error})}
    yield {"data": "[DONE]"}
