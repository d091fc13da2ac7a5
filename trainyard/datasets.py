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
    kind: str  # "pretrain" | "sft" | "dpo"


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
        elif isinstance(obj, dict) and "preferred_output" in obj:
            kind = "dpo"
        return Detected("jsonl", kind)
    return Detected("text", "pretrain")


class LineTooLong(Exception):
    """A line longer than the limit: reading stops there."""

    def __init__(self, number: int, limit: int) -> None:
        super().__init__(f"line {number} is longer than the limit of {limit} bytes")
        self.number = number


def _lines(path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """Numbered lines, none held longer than `limit` bytes (a file with no newline is one
    line)."""
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(limit + 1):
            number += 1
            if len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
                raise LineTooLong(number, limit)
            yield number, raw


def _utf8_error(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"


def validate(path: Path, fmt: str, kind: str, max_line_bytes: int = 16 * 1024**2) -> Report:
    """Check every line of a dataset; count records (lines of text, or JSON objects). A
    line over `max_line_bytes` ends the check with its line number."""
    report = Report()
    try:
        return _validate(path, fmt, kind, max_line_bytes, report)
    except LineTooLong as exc:
        report.add(exc.number, str(exc))
        return report


def _validate(path: Path, fmt: str, kind: str, limit: int, report: Report) -> Report:
    if fmt == "text":
        nonblank = False
        for number, raw in _lines(path, limit):
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
    for number, raw in _lines(path, limit):
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
    if kind == "dpo":
        return _preference_problem(obj)
    if "messages" in obj:
        return _messages_problem(obj["messages"])
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return 'expected string fields "prompt" and "completion", or "messages"'
    if not completion.strip():
        return 'field "completion" is empty'
    return None


ROLES = ("system", "user", "assistant")


def _turns_problem(messages: list[Any], field: str) -> str | None:
    """Why a list of chat turns is unusable, naming the turn: its role and content."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"{field}[{i}] must be an object with role and content"
        role, content = message.get("role"), message.get("content")
        if role is None:
            return f'{field}[{i}] has no "role"'
        if role not in ROLES:
            return f"{field}[{i}] has unknown role {role!r} (expected system, user or assistant)"
        if not isinstance(content, str):
            return f'{field}[{i}] has no string "content"'
        if not content.strip():
            return f"{field}[{i}] ({role}) has empty content"
        if role == "system" and i != 0:
            return f"{field}[{i}]: a system message may only come first"
    return None


def _messages_problem(messages: Any) -> str | None:
    """Why a chat record is unusable, naming the message: roles, content, an answer."""
    if not isinstance(messages, list) or not messages:
        return 'field "messages" must be a non-empty list'
    problem = _turns_problem(messages, "messages")
    if problem:
        return problem
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant turn: nothing to learn from this example"
    return None


def _preference_problem(obj: dict[str, Any]) -> str | None:
    """Why a preference pair (OpenAI's DPO format) is unusable: a prompt ending on a user
    turn, and one assistant answer on each side that differ."""
    prompt = obj.get("input")
    if not isinstance(prompt, dict) or not isinstance(prompt.get("messages"), list):
        return 'field "input" must be an object with a "messages" list'
    messages = prompt["messages"]
    if not messages:
        return 'field "input.messages" must be a non-empty list'
    problem = _turns_problem(messages, "input.messages")
    if problem:
        return problem
    if messages[-1]["role"] != "user":
        return "input.messages must end with a user turn"
    answers = []
    for side in ("preferred_output", "non_preferred_output"):
        output = obj.get(side)
        if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
            return f'field "{side}" must be a list holding one assistant message'
        if output[0].get("role") != "assistant":
            return f"{side}[0] must have role 'assistant'"
        content = output[0].get("content")
        if not isinstance(content, str) or not content.strip():
            return f'{side}[0] has no non-empty string "content"'
        answers.append(content)
    if answers[0] == answers[1]:
        return "preferred_output and non_preferred_output are the same answer"
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
