"""The one chat template trainyard trains and serves with (ChatML), and its loss mask.

Every message renders as

    <|im_start|>{role}\\n{content}<|im_end|>\\n

and a generation prompt is `<|im_start|>assistant\\n`. No EOT follows the last turn:
`<|im_end|>` is the stop token (a fine-tuned model's eos), and packed examples are kept
apart by document ids rather than by separators. No BOS is prepended either.

Loss is carried by each assistant message's content tokens and by its closing
`<|im_end|>`, so the model learns both what to answer and when to stop; system and user
messages, the role headers and the newline after `<|im_end|>` carry none.

Torch-free: the prep workers tokenize SFT datasets with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import Tokenizer

from trainer.tokenizer import EOT, IM_END, IM_START

ROLES = ("system", "user", "assistant")
CHAT_TOKENS = (IM_START, IM_END)

Message = Mapping[str, str]

# The same template as Jinja, for tokenizer_config.json, so that transformers'
# `apply_chat_template` renders exactly what render() does. transformers compiles it with
# trim_blocks and lstrip_blocks, which only strip whitespace around tags; the template keeps
# its newlines inside string literals so those settings cannot change the output.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def header(role: str) -> str:
    """The text that opens a message of this role."""
    return f"{IM_START}{role}\n"


GENERATION_PROMPT = header("assistant")


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as template text, optionally ending with the assistant's header."""
    text = "".join(f"{header(m['role'])}{m['content']}{IM_END}\n" for m in messages)
    return text + GENERATION_PROMPT if add_generation_prompt else text


def to_messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages of an SFT record: `messages` as given, or prompt/completion as a pair."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]


def tokenize_example(tok: Tokenizer, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """Token ids of render(messages) and a 0/1 loss mask of the same length.

    Headers, contents and end tokens are encoded as separate pieces so that no token can
    straddle the line between a prompt and its answer; for ordinary text the ids equal
    those of encoding the rendered string in one go, which is what inference sees.
    """
    for m in messages:
        if m["role"] not in ROLES:
            raise ValueError(f"unknown role {m['role']!r}; expected one of {', '.join(ROLES)}")
    im_end = special_id(tok, IM_END)
    pieces: list[str] = []
    for m in messages:
        pieces += [header(m["role"]), m["content"], "\n"]
    encoded = tok.encode_batch(pieces, add_special_tokens=False)
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        head, content, newline = (encoded[3 * i + j].ids for j in range(3))
        learn = 1 if m["role"] == "assistant" else 0
        ids += [*head, *content, im_end, *newline]
        mask += [0] * len(head) + [learn] * (len(content) + 1) + [0] * len(newline)
    return ids, mask


def ensure_chat_tokens(tok: Tokenizer) -> list[str]:
    """Add the chat special tokens a base tokenizer lacks; return the ones added, in order.

    Added tokens get the next free ids, so a model for the old tokenizer needs its
    embedding grown to vocab_size(tok) (see trainer.hf_import.resize_token_embeddings).
    """
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return missing


def stop_ids(tok: Tokenizer) -> list[int]:
    """Ids that end an assistant reply: `<|im_end|>`, and EOT where the tokenizer has it."""
    ids = [special_id(tok, IM_END)]
    eot = tok.token_to_id(EOT)
    if eot is not None:
        ids.append(int(eot))
    return ids


def special_id(tok: Tokenizer, token: str) -> int:
    """Id of a special token, with a hint when a base tokenizer lacks the chat tokens."""
    tid = tok.token_to_id(token)
    if tid is None:
        raise ValueError(f"tokenizer has no {token} token; call ensure_chat_tokens first")
    return int(tid)
