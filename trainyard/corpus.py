"""A small English corpus the project writes itself, for the demo and for trials.

Simple sentences from a fixed grammar: enough structure (spelling, word order, rhythm) for
a small model to learn visibly in a few hundred steps on a CPU.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

SUBJECTS = [
    "the old sailor",
    "a young queen",
    "the baker",
    "my brother",
    "the shepherd",
    "a quiet child",
    "the captain",
    "her mother",
    "the blacksmith",
    "a tired soldier",
]
VERBS = [
    "walked to",
    "sailed toward",
    "looked at",
    "sang about",
    "dreamed of",
    "ran past",
    "painted",
    "remembered",
    "waited near",
    "spoke of",
]
OBJECTS = [
    "the harbor",
    "the green hills",
    "a red ship",
    "the castle walls",
    "the river",
    "the winter market",
    "an empty road",
    "the lighthouse",
    "the northern sea",
    "a small garden",
]
TIMES = [
    "at dawn",
    "in the evening",
    "after the storm",
    "before the feast",
    "every morning",
    "in early spring",
    "under the moon",
    "when the bells rang",
]
ENDINGS = [
    "and smiled.",
    "and said nothing.",
    "and wept.",
    "and laughed aloud.",
    "and went home.",
    "and began to sing.",
    "and waited.",
    "and felt the wind.",
]


def sentence(rng: random.Random) -> str:
    """One sentence of the grammar."""
    subject = rng.choice(SUBJECTS)
    text = f"{subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TIMES)}"
    text += f" {rng.choice(ENDINGS)}" if rng.random() < 0.6 else "."
    return text[0].upper() + text[1:]


def write(path: Path, target_bytes: int = 1_000_000, seed: int = 7) -> Path:
    """Write paragraphs of sentences until the file reaches about target_bytes."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with path.open("w", encoding="utf-8") as f:
        while size < target_bytes:
            paragraph = " ".join(sentence(rng) for _ in range(rng.randint(2, 5))) + "\n"
            f.write(paragraph)
            size += len(paragraph)
    return path


def reversal_task(n: int, seed: int, length: int = 4) -> list[dict[str, Any]]:
    """Chat examples of a small skill a base model lacks: spell a word backwards.

    Words have one length, so that each answer letter sits at a fixed distance from its
    source: a small model learns the skill in a few hundred steps (with lengths mixed, it
    keeps guessing where the word ends).
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": f"Reverse: {word}"},
                    {"role": "assistant", "content": word[::-1]},
                ]
            }
        )
    return examples
