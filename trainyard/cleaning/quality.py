"""Document quality filters: Gopher's quality and repetition rules (Rae et al., 2021,
appendix A) and C4's page rules (Raffel et al., 2020), each threshold from the spec.

`failed_rule` answers the name of the first rule a document breaks, or None.
"""

from __future__ import annotations

import re
from collections import Counter

from trainyard.cleaning.spec import QualitySpec

# A word (a run of non-space) with no letter in it: numbers, symbols.
NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")
STOP_WORD = re.compile(r"\b(?:the|be|to|of|and|that|have|with)\b")
BULLETS = ("-", "*", "•", "‣", "◦", "·", "–", "—", "●", "▪")  # noqa: RUF001
TERMINAL = (".", "!", "?", '"', "'", "”", "’")  # noqa: RUF001
ELLIPSES = ("...", "…")
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»“”‘’…"  # noqa: RUF001
NOT_WORD_CHARS = dict.fromkeys(map(ord, PUNCTUATION + " \t\n\r\x0b\x0c\xa0"))


def _duplicate_share(items: list[str]) -> tuple[float, float]:
    """The share of items that repeat an earlier one, and the share of characters in them."""
    seen: set[str] = set()
    dup_items = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items / max(len(items), 1), dup_chars / max(total_chars, 1)


def _top_ngram_share(words: list[str], n: int, total_chars: int) -> float:
    """The share of word characters in the most frequent n-gram's occurrences."""
    if len(words) < n:
        return 0.0
    counts = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(w) for w in gram) / total_chars


def _duplicate_ngram_share(words: list[str], n: int, total_chars: int) -> float:
    """The share of word characters covered by n-grams that occur more than once."""
    first: dict[tuple[str, ...], int] = {}
    covered = bytearray(len(words))
    for i, gram in enumerate(zip(*(words[i:] for i in range(n)), strict=False)):
        j = first.setdefault(gram, i)
        if j != i:
            covered[i : i + n] = b"\x01" * n
            covered[j : j + n] = b"\x01" * n
    if not any(covered):
        return 0.0
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / total_chars


def _at_most(value: float, limit: float | None) -> bool:
    return limit is None or value <= limit


def _at_least(value: float, limit: float | None) -> bool:
    return limit is None or value >= limit


def failed_rule(text: str, spec: QualitySpec) -> str | None:
    """The first quality rule the document breaks, or None when it passes them all."""
    words = text.split()
    n_words = len(words)
    if not _at_least(n_words, spec.min_words):
        return "min_words"
    if not _at_most(n_words, spec.max_words):
        return "max_words"
    if n_words == 0:
        return "min_words"
    # Word length counts letters and digits, not the punctuation around them.
    mean_length = len(text.translate(NOT_WORD_CHARS)) / n_words
    if not _at_least(mean_length, spec.min_mean_word_length):
        return "min_mean_word_length"
    if not _at_most(mean_length, spec.max_mean_word_length):
        return "max_mean_word_length"
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    if not _at_most(symbols / n_words, spec.max_symbol_word_ratio):
        return "max_symbol_word_ratio"
    lines = [line for line in text.split("\n") if line.strip()]
    n_lines = max(len(lines), 1)
    bullets = sum(line.lstrip().startswith(BULLETS) for line in lines)
    if not _at_most(bullets / n_lines, spec.max_bullet_lines):
        return "max_bullet_lines"
    ellipsis = sum(line.rstrip().endswith(ELLIPSES) for line in lines)
    if not _at_most(ellipsis / n_lines, spec.max_ellipsis_lines):
        return "max_ellipsis_lines"
    alpha = n_words - len(NO_LETTER_WORD.findall(text))
    if not _at_least(alpha / n_words, spec.min_alpha_words):
        return "min_alpha_words"
    lowered = text.lower()
    stops = spec.min_stop_words
    if stops is not None and len(set(STOP_WORD.findall(lowered))) < stops:
        return "min_stop_words"
    punctuated = sum(line.rstrip().endswith(TERMINAL) for line in lines)
    if not _at_least(punctuated / n_lines, spec.min_punctuated_lines):
        return "min_punctuated_lines"
    if spec.reject_lorem_ipsum and "lorem ipsum" in lowered:
        return "lorem_ipsum"
    return _repetition_rule(text, lines, lowered.split(), spec)


def _repetition_rule(
    text: str, lines: list[str], words: list[str], spec: QualitySpec
) -> str | None:
    line_share, line_chars = _duplicate_share(lines)
    if not _at_most(line_share, spec.max_duplicate_lines):
        return "max_duplicate_lines"
    if not _at_most(line_chars, spec.max_duplicate_line_chars):
        return "max_duplicate_line_chars"
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    para_share, para_chars = _duplicate_share(paragraphs)
    if not _at_most(para_share, spec.max_duplicate_paragraphs):
        return "max_duplicate_paragraphs"
    if not _at_most(para_chars, spec.max_duplicate_paragraph_chars):
        return "max_duplicate_paragraph_chars"
    total = sum(map(len, words)) or 1
    for n, limit in sorted(spec.max_top_ngram_chars.items()):
        if _top_ngram_share(words, n, total) > limit:
            return f"max_top_{n}gram_chars"
    for n, limit in sorted(spec.max_duplicate_ngram_chars.items()):
        share = _duplicate_ngram_share(words, n, total)
        if share > limit:
            return f"max_duplicate_{n}gram_chars"
        if share == 0.0:
            break  # no n-gram repeats, so no longer one can
    return None
