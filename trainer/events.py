"""events.jsonl: the trainer's progress report, one JSON object per line."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from typing import Any, TextIO


def utc_now() -> str:
    """Current time as RFC 3339 UTC with milliseconds, e.g. 2026-11-25T18:00:00.123Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    # JSON has no NaN or Infinity; readers in other languages choke on Python's spelling.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventWriter:
    """Appends events to output_dir/events.jsonl; a no-op where not enabled (rank > 0)."""

    def __init__(self, output_dir: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "events.jsonl")
        self._file: TextIO | None = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            # Append: a resumed attempt or a retry keeps what earlier runs reported.
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def emit(self, type: str, **fields: Any) -> None:
        """Write one event with its time and type, flushed so followers see it at once."""
        if self._file is None:
            return
        event = {"time": utc_now(), "type": type, **{k: _clean(v) for k, v in fields.items()}}
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
