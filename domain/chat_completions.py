"""Chat completions from a loaded chat model: replies streamed as text deltas, with stop
strings and token usage. Runs in the model worker processes (see model_calls.chat)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """One generated reply: its text so far, its token counts and why it ended."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"
    text: str = ""
    _parts: list[str] = field(default_factory=list)


def _earliest(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stream_reply(
    loaded: Any,
    *,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float,
    top_p: float | None,
    seed: int | None,
    stop: Sequence[str],
    reply: Reply,
) -> Iterator[str]:
    """Yield the reply's text as it is sampled, filling `reply` (counts, finish reason).

    Text that could begin a stop string is held back until it cannot; text the tokenizer
    has not finished (a UTF-8 sequence split across byte tokens) waits for its next token.
    """
    from trainer import chat
    from trainer.sample import stream

    prompt = chat.render(messages, add_generation_prompt=True)
    reply.prompt_tokens = len(loaded.tokenizer.encode(prompt).ids)
    tokens: list[int] = []
    sent = 0
    hold = max((len(s) for s in stop), default=1) - 1
    reply.finish_reason = "stop"
    for token in stream(
        loaded,
        prompt,
        max_tokens,
        temperature,
        None,
        seed,
        top_p,
        stop_ids=chat.stop_ids(loaded.tokenizer),
    ):
        tokens.append(token)
        reply.completion_tokens = len(tokens)
        text = str(loaded.tokenizer.decode(tokens))
        cut = _earliest(text, stop)
        if cut is not None:
            reply.text = text[:cut]
            if cut > sent:
                yield text[sent:cut]
            return
        reply.text = text
        ready = len(text) - hold
        if text.endswith("\ufffd"):  # a character still missing bytes
            ready = min(ready, len(text) - 1)
        if ready > sent:
            yield text[sent:ready]
            sent = ready
        if len(tokens) == max_tokens:
            reply.finish_reason = "length"
    if len(reply.text) > sent:
        yield reply.text[sent:]


def can_chat(loaded: Any) -> bool:
    """Whether a loaded model has the chat template's tokens (it was fine-tuned on chat)."""
    from trainer import chat

    return loaded.tokenizer.token_to_id(chat.IM_END) is not None
