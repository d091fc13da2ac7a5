"""One streaming pass that cleans a dataset file into another, with a report.

Documents are blank-line separated paragraphs of text, or the records of a JSONL file
(their `text` field; other fields are kept). Each is read, repaired, filtered and
deduplicated in turn, so memory holds one document and the duplicate indexes, whatever
the file's size.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from trainyard.cleaning.dedup import ExactDedup, NearDedup
from trainyard.cleaning.quality import failed_rule
from trainyard.cleaning.spec import CleaningSpec
from trainyard.cleaning.text import looks_like_html, normalize, strip_html

EXAMPLES = 3
EXAMPLE_CHARS = 200
PROGRESS_BYTES = 64 * 1024 * 1024
# Steps in the order a document meets them: what each may do to it.
STEPS = ("too_long", "html", "normalize", "empty", "quality", "exact_dedup", "near_dedup")


@dataclass
class StepReport:
    """What one step did: documents it changed or removed, and a few of them."""

    modified: int = 0
    removed: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)

    def note(self, text: str, rule: str | None = None) -> None:
        if len(self.examples) < EXAMPLES:
            example = {"text": text[:EXAMPLE_CHARS]}
            if rule:
                example["rule"] = rule
            self.examples.append(example)


@dataclass
class Report:
    """Documents and bytes in and out, and what each step did."""

    documents_in: int = 0
    documents_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    steps: dict[str, StepReport] = field(default_factory=lambda: {s: StepReport() for s in STEPS})

    def as_dict(self) -> dict[str, Any]:
        """The report as the API shows it."""
        steps = {}
        for name, step in self.steps.items():
            entry: dict[str, Any] = {
                "modified": step.modified,
                "removed": step.removed,
                "examples": step.examples,
            }
            if step.by_rule:
                entry["by_rule"] = step.by_rule
            steps[name] = entry
        return {
            "documents_in": self.documents_in,
            "documents_out": self.documents_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "steps": steps,
        }


@dataclass
class Document:
    """One document as read: its text (None when too long to hold), the JSON record it came
    from, and its size in the file."""

    text: str | None
    record: dict[str, Any] | None
    size: int


def _bounded_lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """Lines of at most `limit` bytes, each with whether it was cut (the rest is skipped)."""
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, False
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = f.readline(1 << 20)
            size += len(line)
        yield b"", True


def read_documents(path: Path, fmt: str, limit: int) -> Iterator[Document]:
    """The documents of a dataset file, in order; those over `limit` bytes come unread."""
    with path.open("rb") as f:
        if fmt == "jsonl":
            for raw, cut in _bounded_lines(f, limit):
                if cut:
                    yield Document(None, None, limit)
                elif raw.strip():
                    record = json.loads(raw)
                    yield Document(str(record["text"]), record, len(raw))
            return
        parts: list[bytes] = []
        size, too_long = 0, False
        for raw, cut in _bounded_lines(f, limit):
            if not cut and not raw.strip():
                if parts or too_long:
                    text = None if too_long else b"".join(parts).decode("utf-8")
                    yield Document(text, None, size)
                parts, size, too_long = [], 0, False
                continue
            size += len(raw) if not cut else limit
            too_long = too_long or cut or size > limit
            if too_long:
                parts = []
            else:
                parts.append(raw)
        if parts or too_long:
            yield Document(None if too_long else b"".join(parts).decode("utf-8"), None, size)


class Cleaner:
    """Applies a CleaningSpec to documents one at a time and keeps the report."""

    def __init__(self, spec: CleaningSpec) -> None:
        self.spec = spec
        self.report = Report()
        self.exact = ExactDedup() if spec.dedup.exact else None
        self.near = NearDedup(spec.dedup) if spec.dedup.near else None

    def close(self) -> None:
        """Deletes what the duplicate indexes keep on disk."""
        if self.near is not None:
            self.near.close()

    def _remove(self, step: str, text: str, rule: str | None = None) -> None:
        report = self.report.steps[step]
        report.removed += 1
        if rule:
            report.by_rule[rule] = report.by_rule.get(rule, 0) + 1
        report.note(text, rule)

    def clean(self, doc: Document) -> str | None:
        """The document's cleaned text, or None when a step removes it."""
        self.report.documents_in += 1
        self.report.bytes_in += doc.size
        if doc.text is None:
            self._remove("too_long", f"({doc.size} bytes or more)")
            return None
        text = doc.text
        if self.spec.html.enabled and looks_like_html(text):
            stripped = strip_html(text)
            self.report.steps["html"].modified += 1
            self.report.steps["html"].note(text)
            text = stripped
        if self.spec.normalize.enabled:
            normalized = normalize(text, self.spec.normalize)
            if "".join(normalized.split()) != "".join(text.split()):  # beyond whitespace
                self.report.steps["normalize"].modified += 1
                self.report.steps["normalize"].note(text)
            text = normalized
        if not text.strip():
            self._remove("empty", doc.text)
            return None
        if self.spec.quality.enabled:
            rule = failed_rule(text, self.spec.quality)
            if rule:
                self._remove("quality", text, rule)
                return None
        if self.exact is not None and self.exact.is_duplicate(text):
            self._remove("exact_dedup", text)
            return None
        if self.near is not None and self.near.is_duplicate(text):
            self._remove("near_dedup", text)
            return None
        self.report.documents_out += 1
        return text


def clean_file(
    source: Path,
    target: Path,
    fmt: str,
    spec: CleaningSpec,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Clean `source` into `target` (same format) in one streaming pass; the report."""
    cleaner = Cleaner(spec)
    report = cleaner.report
    next_progress = PROGRESS_BYTES
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="\n") as out, contextlib.closing(cleaner):
        for doc in read_documents(source, fmt, spec.max_document_bytes):
            text = cleaner.clean(doc)
            if progress is not None and report.bytes_in >= next_progress:
                progress(report.bytes_in)
                next_progress += PROGRESS_BYTES
            if text is None:
                continue
            if fmt == "jsonl":
                assert doc.record is not None
                line = json.dumps({**doc.record, "text": text}, ensure_ascii=False) + "\n"
            else:
                # A paragraph holds no blank line: that would split it on the next read.
                body = "\n".join(line for line in text.split("\n") if line.strip())
                line = ("\n" if report.documents_out > 1 else "") + body + "\n"
            out.write(line)
            report.bytes_out += len(line.encode("utf-8"))
    tmp.replace(target)
    report.bytes_in = source.stat().st_size  # separators too: the whole file was read
    return report
