"""Dataset formats: detection from the first bytes, line-numbered validation, documents.

Pure functions over files, shared by the API (detection at upload) and the prep worker
(validation and tokenization).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ERRORS = 20
TEXT_CHUNK_BYTES = 1 << 20


@dataclass
class Detected:
    format: str  # "text" | "jsonl"
    kind: str  # "pretrain" | "sft"


@dataclass
class Report:
    """The outcome of validation: records counted, or the first errors with line numbers."""

    records: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: int | None, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"line": line, "message": message})

    @property
    def ok(self) -> bool:
        return not self.errors


def detect(head: bytes, filename: str | None) -> Detected:
    """Guess the format and kind from the upload's first bytes (and, weakly, its name)."""
    first_line = head.split(b"\n", 1)[0].strip()
    looks_json = first_line.startswith(b"{")
    if looks_json or (filename or "").lower().endswith((".jsonl", ".ndjson")):
        kind = "pretrain"
        try:
            obj = json.loads(first_line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and ("messages" in obj or "prompt" in obj):
            kind = "sft"
        return Detected("jsonl", kind)
    return Detected("text", "pretrain")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        yield from enumerate(f, start=1)


def _utf8_error(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"


def validate(path: Path, fmt: str, kind: str) -> Report:
    """Check every line of a dataset; count records (lines of text, or JSON objects)."""
    report = Report()
    if fmt == "text":
        nonblank = False
        for number, raw in _lines(path):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.add(number, _utf8_error(raw, exc))
                continue
            nonblank = nonblank or bool(text.strip())
            report.records += 1
        if not nonblank and report.ok:
            report.add(None, "the file holds no text")
        return report
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            report.add(number, _utf8_error(raw, exc))
            continue
        except json.JSONDecodeError as exc:
            report.add(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        problem = _record_problem(obj, kind)
        if problem:
            report.add(number, problem)
            continue
        report.records += 1
    if report.records == 0 and report.ok:
        report.add(None, "the file holds no records")
    return report


def _record_problem(obj: Any, kind: str) -> str | None:
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if kind == "pretrain":
        text = obj.get("text")
        if not isinstance(text, str):
            return 'missing string field "text"'
        if not text:
            return 'field "text" is empty'
        return None
    if "messages" in obj:
        return _messages_problem(obj["messages"])
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return 'expected string fields "prompt" and "completion", or "messages"'
    if not completion.strip():
        return 'field "completion" is empty'
    return None


ROLES = ("system", "user", "assistant")


def _messages_problem(messages: Any) -> str | None:
    """Why a chat record is unusable, naming the message: roles, content, an answer."""
    if not isinstance(messages, list) or not messages:
        return 'field "messages" must be a non-empty list'
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role is None:
            return f'messages[{i}] has no "role"'
        if role not in ROLES:
            return f"messages[{i}] has unknown role {role!r} (expected system, user or assistant)"
        if not isinstance(content, str):
            return f'messages[{i}] has no string "content"'
        if not content.strip():
            return f"messages[{i}] ({role}) has empty content"
        if role == "system" and i != 0:
            return f"messages[{i}]: a system message may only come first"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn: nothing to learn from this example"
    return None


def documents(path: Path, fmt: str) -> Iterator[str]:
    """The texts to tokenize: ~1 MB chunks cut at line ends for text, records for JSONL."""
    if fmt == "text":
        decoder = codecs.getincrementaldecoder("utf-8")()
        with path.open("rb") as f:
            pending = ""
            while chunk := f.read(TEXT_CHUNK_BYTES):
                pending += decoder.decode(chunk)
                cut = pending.rfind("\n") + 1
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
            pending += decoder.decode(b"", final=True)
            if pending:
                yield pending
        return
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)["text"]
