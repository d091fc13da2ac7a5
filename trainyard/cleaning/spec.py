"""Cleaning options: the body of `POST /v1/datasets/{id}/clean`. `{}` means every step on,
with the thresholds that the Gopher (Rae et al., 2021) and C4 (Raffel et al., 2020) rules
use; `null` turns a single rule off."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """An options model that rejects fields it does not know."""

    model_config = ConfigDict(extra="forbid")


class NormalizeSpec(Strict):
    """Unicode form, repair of mis-decoded text, control characters and whitespace."""

    enabled: bool = True
    unicode_form: Literal["NFC", "NFKC"] | None = "NFC"
    fix_mojibake: bool = True
    remove_control: bool = True
    whitespace: bool = True


class HtmlSpec(Strict):
    """Markup stripped from documents that look like HTML (scripts and styles dropped)."""

    enabled: bool = True


class QualitySpec(Strict):
    """Document filters: Gopher's quality and repetition rules, and C4's page rules."""

    enabled: bool = True
    min_words: int | None = Field(50, ge=0)
    max_words: int | None = Field(100_000, ge=1)
    min_mean_word_length: float | None = Field(3.0, ge=0)
    max_mean_word_length: float | None = Field(10.0, ge=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)  # "#" and ellipses per word
    max_bullet_lines: float | None = Field(0.9, ge=0, le=1)
    max_ellipsis_lines: float | None = Field(0.3, ge=0, le=1)
    min_alpha_words: float | None = Field(0.8, ge=0, le=1)  # share of words with a letter
    min_stop_words: int | None = Field(2, ge=0)  # of the, be, to, of, and, that, have, with
    min_punctuated_lines: float | None = Field(0.12, ge=0, le=1)  # lines ending . ! ? "
    max_duplicate_lines: float | None = Field(0.3, ge=0, le=1)
    max_duplicate_line_chars: float | None = Field(0.2, ge=0, le=1)
    max_duplicate_paragraphs: float | None = Field(0.3, ge=0, le=1)
    max_duplicate_paragraph_chars: float | None = Field(0.3, ge=0, le=1)
    # Share of characters in the most frequent word n-gram, for n = 2, 3, 4.
    max_top_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    # Share of characters in word n-grams that occur more than once, for n = 5 ... 10.
    max_duplicate_ngram_chars: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    reject_lorem_ipsum: bool = True


class DedupSpec(Strict):
    """Exact duplicates (on normalised text) and near duplicates (MinHash + LSH)."""

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, lt=1)  # Jaccard similarity of word shingles
    num_perm: int = Field(128, ge=16, le=512)
    shingle_words: int = Field(5, ge=1, le=20)


class CleaningSpec(Strict):
    """Every step of a cleaning pass, each with its defaults."""

    normalize: NormalizeSpec = Field(default_factory=NormalizeSpec)
    html: HtmlSpec = Field(default_factory=HtmlSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    # Longer documents are dropped unread (and counted), so memory stays bounded.
    max_document_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
