"""A received file as the services take it: the API streams uploads into these."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Upload:
    """A received file, still in its temporary place."""

    path: Path
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    head: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)
