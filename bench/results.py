"""Writing a benchmark's table into bench/RESULTS.md (standard library only: the GPU
bench imports it on machines without the test dependencies)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, text: str, begin: str, end: str, heading: str) -> None:
    """Put `text` between the markers `begin` and `end` of a results file, replacing what was
    there; the first time, append it as a new section under `heading`."""
    block = f"{begin}\n{text}{end}\n"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + f"\n\n{heading}\n\n" + block
    path.write_text(new)
