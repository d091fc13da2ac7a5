"""A generated corpus with known defects, for the cleaning tests and benchmark.

Clean documents are paragraphs of sentences over a large made-up vocabulary (so no two
are alike by chance). Planted among them: exact duplicates (case and spacing changed),
near duplicates (a few words changed), HTML pages, mis-decoded text (UTF-8 read as
Windows-1252), text with control characters, and junk that the quality rules catch.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
FUNCTION_WORDS = [
    "the", "of", "and", "to", "with", "that", "have", "in", "on", "a", "is", "was", "for",
    "as", "by", "from", "at", "it", "be", "this",
]  # fmt: skip
ACCENTED = ["café", "naïve", "résumé", "façade", "déjà", "señor", "Zürich", "Ångström"]
JUNK = [
    "#### #### #### ####\n#### #### ####",
    "Home | About | Contact | Login",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. " * 6,
    "\n".join(["Buy now and save on the best deals of the year."] * 12),
    " ".join(str(1000 + i * 7) for i in range(80)),
    " ".join("supercalifragilisticexpialidocious-antidisestablishmentarianism" for _ in range(60)),
    "\n".join(f"- item {i} of the list and that" for i in range(40)),
    "Click here... to read more... of the story... with us...\n" * 8,
]


@dataclass
class Planted:
    """The corpus in file order, what cleaning must leave, and what was planted."""

    documents: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    planted: Counter[str] = field(default_factory=Counter)

    def write(self, path: Path, fmt: str) -> Path:
        """Write the corpus as text (blank-line separated) or JSONL records."""
        with path.open("w", encoding="utf-8") as f:
            if fmt == "jsonl":
                for i, doc in enumerate(self.documents):
                    f.write(json.dumps({"text": doc, "source": f"doc-{i}"}) + "\n")
            else:
                f.write("\n\n".join(self.documents) + "\n")
        return path


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def _sentence(rng: random.Random, vocabulary: list[str], accented: bool) -> str:
    words = [
        rng.choice(FUNCTION_WORDS) if rng.random() < 0.3 else rng.choice(vocabulary)
        for _ in range(rng.randint(8, 16))
    ]
    if accented:
        words[rng.randrange(len(words))] = rng.choice(ACCENTED)
    return words[0].capitalize() + " " + " ".join(words[1:]) + "."


def clean_document(rng: random.Random, vocabulary: list[str], accented: bool = False) -> str:
    """A paragraph of 25 to 35 sentences, a few to a line."""
    sentences = [_sentence(rng, vocabulary, accented) for _ in range(rng.randint(25, 35))]
    lines, i = [], 0
    while i < len(sentences):
        step = rng.randint(1, 3)
        lines.append(" ".join(sentences[i : i + step]))
        i += step
    return "\n".join(lines)


def _near(rng: random.Random, doc: str, vocabulary: list[str]) -> str:
    """The document with three words replaced."""
    words = doc.split(" ")
    for i in rng.sample(range(1, len(words) - 1), 3):
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def _html(doc: str) -> str:
    body = "".join(f"<p>{line}</p>" for line in doc.split("\n"))
    return (
        "<!DOCTYPE html><html><head><title>A page</title><style>p {color: red}</style>"
        '<script>var tracking = "do not keep";</script></head>'
        f"<body>\n<div class='content'>{body}</div>\n</body></html>"
    )


def _mojibake(doc: str) -> str:
    return doc.encode("utf-8").decode("cp1252", errors="replace")


def generate(documents: int = 200, seed: int = 0) -> Planted:
    """A corpus of about `documents` clean documents with about a quarter as many plants."""
    rng = random.Random(seed)
    vocabulary = sorted({_word(rng) for _ in range(20_000)})
    out = Planted()
    clean: list[str] = []
    for i in range(documents):
        doc = clean_document(rng, vocabulary, accented=i % 10 == 0)
        clean.append(doc)
        out.documents.append(doc)
        out.expected.append(doc)
        roll = rng.random() if i > 0 else 1.0
        earlier = clean[rng.randrange(len(clean))]
        if roll < 0.05:
            out.documents.append(earlier.upper().replace(" ", "  "))
            out.planted["exact_duplicate"] += 1
        elif roll < 0.10:
            out.documents.append(_near(rng, earlier, vocabulary))
            out.planted["near_duplicate"] += 1
        elif roll < 0.13:
            fresh = clean_document(rng, vocabulary)
            out.documents.append(_html(fresh))
            out.expected.append(fresh)
            out.planted["html"] += 1
        elif roll < 0.16:
            fresh = clean_document(rng, vocabulary, accented=True)
            out.documents.append(_mojibake(fresh))
            out.expected.append(fresh)
            out.planted["mojibake"] += 1
        elif roll < 0.18:
            fresh = clean_document(rng, vocabulary)
            out.documents.append(fresh.replace(" ", " \x07", 3).replace("\n", "\x00\n", 2))
            out.expected.append(fresh)
            out.planted["control"] += 1
        elif roll < 0.24:
            out.documents.append(rng.choice(JUNK))
            out.planted["junk"] += 1
    return out
