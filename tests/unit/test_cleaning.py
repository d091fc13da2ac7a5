"""The cleaning pass on a planted corpus: every planted defect goes, every clean document
stays; each step and option on its own; memory stays bounded by the document limit."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainyard.cleaning import dedup as dedup_module
from trainyard.cleaning.dedup import KeyIndex, NearDedup
from trainyard.cleaning.pipeline import clean_file, read_documents
from trainyard.cleaning.planted import generate
from trainyard.cleaning.quality import failed_rule
from trainyard.cleaning.spec import CleaningSpec, DedupSpec, NormalizeSpec, QualitySpec
from trainyard.cleaning.text import looks_like_html, normalize, strip_html


def _texts(path: Path, fmt: str) -> list[str]:
    return [d.text.strip() for d in read_documents(path, fmt, 1 << 22) if d.text is not None]


@pytest.mark.parametrize("fmt", ["text", "jsonl"])
def test_planted_corpus_loses_every_plant_and_no_clean_document(tmp_path: Path, fmt: str) -> None:
    corpus = generate(documents=150, seed=3)
    assert all(corpus.planted[k] > 0 for k in ("exact_duplicate", "near_duplicate", "junk"))
    assert all(corpus.planted[k] > 0 for k in ("html", "mojibake", "control"))
    source = corpus.write(tmp_path / f"in.{fmt}", fmt)

    report = clean_file(source, tmp_path / f"out.{fmt}", fmt, CleaningSpec()).as_dict()

    assert _texts(tmp_path / f"out.{fmt}", fmt) == corpus.expected
    steps = report["steps"]
    assert steps["exact_dedup"]["removed"] == corpus.planted["exact_duplicate"]
    assert steps["near_dedup"]["removed"] == corpus.planted["near_duplicate"]
    assert steps["quality"]["removed"] == corpus.planted["junk"]
    assert steps["html"]["modified"] == corpus.planted["html"]
    repaired = corpus.planted["mojibake"] + corpus.planted["control"]
    assert steps["normalize"]["modified"] == repaired
    assert report["documents_in"] == len(corpus.documents)
    assert report["documents_out"] == len(corpus.expected)
    assert report["bytes_in"] == source.stat().st_size
    assert report["bytes_out"] == (tmp_path / f"out.{fmt}").stat().st_size
    assert 0 < len(steps["quality"]["examples"]) <= 3
    assert sum(steps["quality"]["by_rule"].values()) == corpus.planted["junk"]


def test_jsonl_records_keep_their_other_fields(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    doc = generate(documents=1, seed=1).expected[0]
    source.write_text(json.dumps({"text": "  " + doc + "\x00", "url": "u1", "n": 3}) + "\n")
    clean_file(source, tmp_path / "out.jsonl", "jsonl", CleaningSpec())
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"text": doc, "url": "u1", "n": 3}


def test_html_is_stripped_with_a_parser() -> None:
    page = (
        "<html><head><title>T</title><script>var x = '<p>not text</p>';</script></head>"
        "<body><p>First &amp; <b>bold</b> line.</p><div>Second<br>third</div></body></html>"
    )
    assert looks_like_html(page)
    assert not looks_like_html("if a < b and b > c then a is smallest")
    lines = [line.strip() for line in strip_html(page).split("\n") if line.strip()]
    assert lines == ["First & bold line.", "Second", "third"]


def test_normalize_repairs_and_each_option_turns_off() -> None:
    broken = "cafÃ©\u00a0 au\tlait\x07  \r\nna\u0131\u0308ve ﬁne"
    assert normalize(broken, NormalizeSpec()) == "café au lait\nnaı̈ve ﬁne"  # noqa: RUF001
    nfkc = normalize("ﬁne ①", NormalizeSpec(unicode_form="NFKC"))
    assert nfkc == "fine 1"
    assert normalize("cafÃ©", NormalizeSpec(fix_mojibake=False)) == "cafÃ©"
    assert normalize("a\x07b", NormalizeSpec(remove_control=False)) == "a\x07b"
    assert normalize("a  b", NormalizeSpec(whitespace=False)) == "a  b"


def test_each_quality_rule_names_itself() -> None:
    spec = QualitySpec()
    good = generate(documents=1, seed=2).expected[0]
    line = "The keeper of the lighthouse walked with the others and sang to the harbor."
    assert failed_rule(good, spec) is None
    assert failed_rule("the cat sat.", spec) == "min_words"
    assert failed_rule(" ".join(["1234"] * 60), spec) == "min_alpha_words"
    assert failed_rule(" ".join(["ab"] * 60), spec) == "min_mean_word_length"
    assert failed_rule(good + "\n" + "# " * 60, spec) == "max_symbol_word_ratio"
    assert failed_rule("\n".join(f"- {line}" for _ in range(9)), spec) == "max_bullet_lines"
    assert failed_rule("\n".join([line] * 12), spec) == "max_duplicate_lines"
    assert failed_rule("\n".join(good.split("\n")[:8]).replace(".", ""), spec) == (
        "min_punctuated_lines"
    )
    assert failed_rule(good + " lorem ipsum dolor.", spec) == "lorem_ipsum"
    no_stops = " ".join(f"word{i}" for i in range(80)) + "."
    assert failed_rule(no_stops, spec) == "min_stop_words"
    assert failed_rule(no_stops, QualitySpec(min_stop_words=None)) is None
    assert failed_rule("the cat sat with the dog.", QualitySpec(min_words=None)) is None
    repeated = good + " " + " ".join(good.split()[:40]) * 2
    assert failed_rule(repeated, spec) is not None
    assert failed_rule(repeated, spec).startswith(("max_top_", "max_duplicate_"))  # type: ignore[union-attr]


def test_near_duplicates_need_the_threshold() -> None:
    doc = generate(documents=1, seed=5).expected[0]
    words = doc.split(" ")
    near = DedupSpec()
    dedup = NearDedup(near)
    assert not dedup.is_duplicate(doc)
    changed = words.copy()
    changed[10] = "zzz"
    assert dedup.is_duplicate(" ".join(changed))
    half = " ".join(words[: len(words) // 2] + [f"new{i}" for i in range(len(words) // 2)])
    assert not dedup.is_duplicate(half)
    assert not NearDedup(near).is_duplicate(half)


def test_key_index_finds_every_entry_across_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup_module, "BUFFERED_KEYS", 7)
    index = KeyIndex()
    rng = random.Random(3)
    entries = [(rng.randrange(50) * 2**58 + 11, doc) for doc in range(500)]
    for key, doc in entries:
        index.add(key, doc)
    assert len(index) == 500 and len(index.keys) > 0  # most entries went through merges
    for key in {k for k, _ in entries}:
        assert index.get(key) == [d for k, d in entries if k == key]
    assert index.get(12345) == []


def test_near_dedup_memory_is_bytes_not_kilobytes_per_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dedup_module, "BUFFERED_KEYS", 64)
    corpus = generate(documents=600, seed=6)
    tracemalloc.start()
    dedup = NearDedup(DedupSpec())
    kept = sum(not dedup.is_duplicate(doc) for doc in corpus.expected)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert kept == len(corpus.expected)  # the clean documents are not near each other
    # 14 bands x 12 bytes per kept document, and the bounded buffer of recent keys; the
    # 512-byte signatures are on disk. datasketch's own index held about 3 KB each.
    assert held < kept * 400, (held, kept)


def test_steps_turn_off(tmp_path: Path) -> None:
    corpus = generate(documents=60, seed=4)
    source = corpus.write(tmp_path / "in.txt", "text")
    spec = CleaningSpec.model_validate(
        {"quality": {"enabled": False}, "dedup": {"exact": False, "near": False}}
    )
    report = clean_file(source, tmp_path / "out.txt", "text", spec).as_dict()
    assert report["documents_out"] == report["documents_in"] == len(corpus.documents)


def test_a_document_over_the_limit_is_dropped_unread(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    good = generate(documents=2, seed=6).expected
    huge = ("the and of " * 100_000).strip()  # one paragraph of 1.1 MB, one long line
    source.write_text(f"{good[0]}\n\n{huge}\n\n{good[1]}\n")
    spec = CleaningSpec(max_document_bytes=64 * 1024)
    report = clean_file(source, tmp_path / "out.txt", "text", spec).as_dict()
    assert report["steps"]["too_long"]["removed"] == 1
    assert _texts(tmp_path / "out.txt", "text") == good


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        CleaningSpec.model_validate({"dedup": {"threshold": 1.5}})
    assert err.value.errors()[0]["loc"] == ("dedup", "threshold")
    with pytest.raises(ValidationError) as err:
        CleaningSpec.model_validate({"normalise": {}})
    assert err.value.errors()[0]["loc"] == ("normalise",)
    assert CleaningSpec.model_validate({}) == CleaningSpec()
