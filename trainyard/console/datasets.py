"""`trainyard datasets`: upload (with a progress bar and the validation report), list, show,
delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from trainyard.console import output
from trainyard.console.config import client
from trainyard.console.options import After, AsJson, Limit
from trainyard.results import Dataset

app = typer.Typer(help="Upload and inspect datasets.", no_args_is_help=True)


def report(ds: Dataset) -> None:
    """A dataset's fields and, when invalid, each bad line and why."""
    output.fields(
        [
            ("id", ds.id),
            ("name", ds.name),
            ("status", ds.status),
            ("format", ds.format),
            ("kind", ds.kind),
            ("records", ds.records),
            ("bytes", ds.bytes),
            ("sha256", ds.sha256),
            ("created", ds.created_at.isoformat()),
        ]
    )
    if ds.errors:
        output.table(["line", "problem"], [(e.line, e.message) for e in ds.errors])


@app.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    name: Annotated[str | None, typer.Option(help="dataset name (default: file name)")] = None,
    wait: Annotated[bool, typer.Option(help="wait for validation")] = True,
    as_json: AsJson = False,
) -> None:
    """Upload a text or JSONL file; show its validation report (exit 1 when invalid)."""
    with client() as c:
        if output.plain() or as_json:
            ds = c.datasets.upload(path, name=name, wait=wait)
        else:
            columns = [*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn()]
            with Progress(*columns, TransferSpeedColumn(), console=output.console) as bar:
                task = bar.add_task(f"uploading {path.name}", total=path.stat().st_size)
                ds = c.datasets.upload(
                    path,
                    name=name,
                    wait=wait,
                    on_progress=lambda sent, _: bar.update(task, completed=sent),
                )
    if as_json:
        output.emit_json(ds)
    else:
        report(ds)
    if ds.status == "invalid":
        raise typer.Exit(1)


@app.command("list")
def list_(limit: Limit = 20, after: After = None, as_json: AsJson = False) -> None:
    """The project's datasets, newest first."""
    with client() as c:
        page = c.datasets.list(limit=limit, after=after)
    if as_json:
        output.emit_json(page)
        return
    output.table(
        ["id", "name", "status", "kind", "records", "bytes", "created"],
        [
            (d.id, d.name, d.status, d.kind, d.records, d.bytes, d.created_at.isoformat())
            for d in page.data
        ],
    )


@app.command()
def show(dataset_id: str, as_json: AsJson = False) -> None:
    """One dataset with its validation report."""
    with client() as c:
        ds = c.datasets.get(dataset_id)
    if as_json:
        output.emit_json(ds)
    else:
        report(ds)


@app.command()
def delete(dataset_id: str, as_json: AsJson = False) -> None:
    """Delete a dataset."""
    with client() as c:
        c.datasets.delete(dataset_id)
    if as_json:
        output.emit_json({"id": dataset_id, "deleted": True})
    else:
        print(f"deleted {dataset_id}")
