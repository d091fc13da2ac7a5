"""Options that many commands share."""

from __future__ import annotations

from typing import Annotated

import typer

AsJson = Annotated[bool, typer.Option("--json", help="print JSON (one document per line)")]
Limit = Annotated[int, typer.Option(min=1, max=100, help="how many to show")]
After = Annotated[str | None, typer.Option(help="show those after this id (paging)")]
