"""How the CLI prints: rich on a terminal, plain lines without one, JSON with --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

SPARKS = "▁▂▃▄▅▆▇█"


def plain() -> bool:
    """Whether stdout is not a terminal: then no colour, no tables, no animation."""
    return not console.is_terminal


def emit_json(value: Any) -> None:
    """Print one JSON document (a typed result, a list of them, or plain data) on one line."""
    print(json.dumps(_jsonable(value)), flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def text(value: object) -> str:
    """A cell: '-' for nothing, short floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A table on a terminal; tab-separated lines with a header line otherwise."""
    cells = [[text(c) for c in row] for row in rows]
    if plain():
        print("\t".join(columns))
        for row in cells:
            print("\t".join(row))
        return
    t = Table(*columns, header_style="bold")
    for row in cells:
        t.add_row(*row, style=None)
    console.print(t, markup=False)


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    """`name: value` lines (values printed as text, never as markup)."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        console.print(f"{key:<{width}}  {text(value)}", markup=False, soft_wrap=True)


def spark(values: Sequence[float], width: int = 16) -> str:
    """A small trend of the last values, one block character each."""
    tail = list(values)[-width:]
    if not tail:
        return ""
    low, high = min(tail), max(tail)
    span = (high - low) or 1.0
    return "".join(SPARKS[int((v - low) / span * (len(SPARKS) - 1))] for v in tail)


def fail(message: str, code: int = 1) -> None:
    """Print an error on stderr and leave with a non-zero exit code."""
    errors.print(f"error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)
