"""Dataset formats: detection, line-numbered validation, and chunked documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainyard import datasets
from trainyard.datasets import MAX_ERRORS, TEXT_CHUNK_BYTES, detect, documents, validate


def write(tmp_path: Path, data: bytes | str, name: str = "data") -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("head", "filename", "fmt", "kind"),
    [
        (b"once upon a time\nthere was\n", "story.txt", "text", "pretrain"),
        (b"once upon a time\n", None, "text", "pretrain"),
        (b'{"text": "hello"}\n{"text": "world"}\n', "data.jsonl", "jsonl", "pretrain"),
        (b'{"text": "hello"}\n', None, "jsonl", "pretrain"),
        (b'  {"text": "indented"}\n', "x.bin", "jsonl", "pretrain"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', None, "jsonl", "sft"),
        (b'{"prompt": "2+2=", "completion": "4"}\n', "qa.jsonl", "jsonl", "sft"),
        (b"not json at all\n", "data.JSONL", "jsonl", "pretrain"),
        (b"plain\n", "data.ndjson", "jsonl", "pretrain"),
    ],
)
def test_detect(head: bytes, filename: str | None, fmt: str, kind: str) -> None:
    found = detect(head, filename)
    assert (found.format, found.kind) == (fmt, kind)


def test_text_counts_lines_as_records(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "one\ntwo\n\nfour\n"), "text", "pretrain")
    assert report.ok and report.records == 4


def test_text_non_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, b"good line\nanother\ncaf\xe9 au lait\nfine\n")
    report = validate(path, "text", "pretrain")
    assert not report.ok
    assert report.errors == [{"line": 3, "message": "not valid UTF-8: byte 0xe9 at column 4"}]


def test_text_with_nothing_but_blank_lines_is_invalid(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "\n  \n\n"), "text", "pretrain")
    assert not report.ok and report.errors[0]["line"] is None


def test_jsonl_records_skip_blank_lines_but_keep_line_numbers(tmp_path: Path) -> None:
    lines = ['{"text": "a"}', "", '{"text": "b"}', "   ", '{"text": "c" oops}', '{"text": "d"}']
    report = validate(write(tmp_path, "\n".join(lines) + "\n"), "jsonl", "pretrain")
    assert report.records == 3
    assert [e["line"] for e in report.errors] == [5]
    assert report.errors[0]["message"].startswith("invalid JSON")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"body": "x"}', 'missing string field "text"'),
        ('{"text": ""}', 'field "text" is empty'),
        ('{"text": 3}', 'missing string field "text"'),
        ('["text"]', "expected a JSON object, got list"),
        ("42", "expected a JSON object, got int"),
    ],
)
def test_jsonl_pretrain_record_problems(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, '{"text": "fine"}\n' + line + "\n")
    report = validate(path, "jsonl", "pretrain")
    assert report.errors == [{"line": 2, "message": message}]
    assert report.records == 1


def test_jsonl_non_utf8_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    report = validate(path, "jsonl", "pretrain")
    assert [e["line"] for e in report.errors] == [2]
    assert "UTF-8" in report.errors[0]["message"]


def test_jsonl_sft_records(tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {"prompt": "2+2=", "completion": "4"},
        {"messages": []},
        {"prompt": "no completion"},
    ]
    path = write(tmp_path, "\n".join(json.dumps(x) for x in lines) + "\n")
    report = validate(path, "jsonl", "sft")
    assert report.records == 2
    assert [e["line"] for e in report.errors] == [3, 4]


def test_only_the_first_errors_are_kept(tmp_path: Path) -> None:
    lines = ['{"text": "ok"}'] + ["broken"] * (MAX_ERRORS + 15) + ['{"text": "ok"}']
    report = validate(write(tmp_path, "\n".join(lines) + "\n"), "jsonl", "pretrain")
    assert MAX_ERRORS == 20
    assert [e["line"] for e in report.errors] == list(range(2, 2 + MAX_ERRORS))
    assert report.records == 2


def test_empty_jsonl_is_invalid(tmp_path: Path) -> None:
    report = validate(write(tmp_path, "\n\n"), "jsonl", "pretrain")
    assert not report.ok and report.records == 0


def test_jsonl_documents_are_the_texts(tmp_path: Path) -> None:
    path = write(tmp_path, '{"text": "a\\nb"}\n\n{"text": "ç"}\n')
    assert list(documents(path, "jsonl")) == ["a\nb", "ç"]


def test_text_documents_are_cut_at_line_ends_and_reassemble(tmp_path: Path) -> None:
    # Multi-byte characters sit on both sides of every 1 MB boundary, at every byte offset.
    unit = "héllo wörld ☃ 𝄞 naïve €\n"
    text = unit * (3 * TEXT_CHUNK_BYTES // len(unit.encode()) + 7)
    path = write(tmp_path, text)
    chunks = list(documents(path, "text"))
    assert len(chunks) >= 3
    assert "".join(chunks) == text
    assert all(c.endswith("\n") for c in chunks)


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_a_character_straddling_the_chunk_boundary_survives(tmp_path: Path, shift: int) -> None:
    # A 4-byte character starting `shift` bytes before the 1 MB boundary is split across reads.
    text = "a" * (TEXT_CHUNK_BYTES - shift) + "\U0001d11e tail\nlast line without newline"
    raw = text.encode()
    assert raw[TEXT_CHUNK_BYTES - shift : TEXT_CHUNK_BYTES - shift + 4] == "\U0001d11e".encode()
    chunks = list(documents(write(tmp_path, raw), "text"))
    assert "".join(chunks) == text
    assert chunks[-1] == "last line without newline"


def test_a_line_longer_than_a_chunk_is_not_split(tmp_path: Path) -> None:
    text = "x" * (TEXT_CHUNK_BYTES + 10) + "\nshort\n"
    chunks = list(documents(write(tmp_path, text), "text"))
    assert chunks == [text]


def test_small_chunks_cut_only_at_line_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "TEXT_CHUNK_BYTES", 7)
    text = "ab\nçdé\n€€€€\nz"
    chunks = list(documents(write(tmp_path, text), "text"))
    assert "".join(chunks) == text
    assert all(c.endswith("\n") for c in chunks[:-1])
    assert len(chunks) > 1
