"""Tokenizer tests: byte ids equal utf-8 bytes; BPE trains with the reserved tokens."""

from __future__ import annotations

from pathlib import Path

from tests.trainer.trainer_testkit import corpus
from trainer import tokenizer as tokmod


def test_byte_tokenizer_ids_are_utf8_bytes() -> None:
    tok = tokmod.byte_tokenizer()
    text = "Hello, wörld!\n\ttabs  and spaces ✓ \x00\x7f 日本語"
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tokmod.eot_id(tok) == 256
    assert tokmod.vocab_size(tok) == 257
    assert tok.encode("a" + tokmod.EOT).ids == [97, 256]


def test_byte_tokenizer_round_trips_through_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tokmod.byte_tokenizer().save(str(path))
    tok = tokmod.load(str(path))
    assert tok.encode("round trip").ids == list(b"round trip")


def test_train_bpe_reserves_special_tokens() -> None:
    tok = tokmod.train_bpe(corpus(100), vocab_size=400)
    assert 300 < tokmod.vocab_size(tok) <= 400
    for special in (tokmod.EOT, tokmod.IM_START, tokmod.IM_END):
        assert tok.token_to_id(special) is not None
    text = "The river keeps warm light. ü"
    ids = tok.encode(text).ids
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned
    assert tok.decode(ids) == text


def test_token_dtype() -> None:
    assert tokmod.token_dtype(257) == "uint16"
    assert tokmod.token_dtype(65536) == "uint16"
    assert tokmod.token_dtype(65537) == "uint32"
