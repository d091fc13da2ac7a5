"""`trainyard jobs`: create from a spec file, list, show, cancel, pause, resume, watch, logs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trainyard.client import Client
from trainyard.console import output
from trainyard.console.config import client
from trainyard.console.options import After, AsJson, Limit
from trainyard.results import Event, Job

app = typer.Typer(help="Create, follow and control training jobs.", no_args_is_help=True)

# `jobs watch` exits with the job's outcome.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 3}


def load_spec(source: str, overrides: list[str]) -> dict[str, Any]:
    """A JobSpec from a YAML or JSON file ('-' for stdin), with `a.b=value` overrides
    (values read as YAML: 500 is a number, true a boolean)."""
    raw = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        spec = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{source} is not YAML or JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{source} must hold a mapping (a JobSpec), not {spec!r}")
    for item in overrides:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise typer.BadParameter(f"--set {item!r}: expected FIELD=VALUE")
        *parents, leaf = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"--set {item!r}: {part} is not a mapping")
        node[leaf] = yaml.safe_load(value)
    return spec


def summary(job: Job) -> list[tuple[str, object]]:
    """A job's fields, as `jobs show` prints them."""
    p = job.progress
    pairs: list[tuple[str, object]] = [
        ("id", job.id),
        ("name", job.name),
        ("type", job.type),
        ("status", job.status),
        ("step", f"{p.step}/{p.max_steps}"),
        ("loss", p.loss),
        ("val_loss", p.val_loss),
        ("tokens/s", p.tokens_per_s),
        ("eta_s", p.eta_seconds),
        ("attempt", job.attempt),
        ("dataset", job.dataset_id),
        ("model", job.model_id),
        ("created", job.created_at.isoformat()),
    ]
    if job.error:
        pairs.append(("error", f"{job.error.code}: {job.error.message}"))
    return pairs


@app.command()
def create(
    file: Annotated[str, typer.Option("-f", "--file", help="JobSpec as YAML or JSON; - for stdin")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a field: training.max_steps=500")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="reuse to never create twice")] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="then follow it live")] = False,
    as_json: AsJson = False,
) -> None:
    """Submit a job; print its id (and resolved spec with --json)."""
    spec = load_spec(file, set_ or [])
    with client() as c:
        job = c.jobs.create(spec, idempotency_key=idempotency_key)
        if as_json:
            output.emit_json(job)
        else:
            print(f"created {job.id} ({job.status})")
        if watch_:
            raise typer.Exit(follow(c, job.id, as_json))


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="only jobs in this status")] = None,
    limit: Limit = 20,
    after: After = None,
    as_json: AsJson = False,
) -> None:
    """The project's jobs, newest first."""
    with client() as c:
        page = c.jobs.list(status=status, limit=limit, after=after)
    if as_json:
        output.emit_json(page)
        return
    output.table(
        ["id", "name", "type", "status", "step", "loss", "created"],
        [
            (
                j.id,
                j.name,
                j.type,
                j.status,
                f"{j.progress.step}/{j.progress.max_steps}",
                j.progress.loss,
                j.created_at.isoformat(),
            )
            for j in page.data
        ],
    )


@app.command()
def show(job_id: str, as_json: AsJson = False) -> None:
    """A job's status, progress, error and model."""
    with client() as c:
        job = c.jobs.get(job_id)
    if as_json:
        output.emit_json(job)
    else:
        output.fields(summary(job))


def _act(job_id: str, action: str, as_json: bool) -> None:
    with client() as c:
        job = getattr(c.jobs, action)(job_id)
    if as_json:
        output.emit_json(job)
    else:
        print(f"{job.id}: {job.status}")


@app.command()
def cancel(job_id: str, as_json: AsJson = False) -> None:
    """Cancel a job (idempotent)."""
    _act(job_id, "cancel", as_json)


@app.command()
def pause(job_id: str, as_json: AsJson = False) -> None:
    """Pause a running job: it checkpoints and frees its nodes."""
    _act(job_id, "pause", as_json)


@app.command()
def resume(job_id: str, as_json: AsJson = False) -> None:
    """Resume a paused job from its checkpoint."""
    _act(job_id, "resume", as_json)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def view(job: Job, losses: list[float], val_losses: list[float]) -> Group:
    """The live view of a job: status, a step bar, loss trends, speed and ETA."""
    p = job.progress
    grid = Table.grid(padding=(0, 2))
    grid.add_row(Text(f"{job.id}  {job.name or ''}"), Text(job.status, style="bold"))
    grid.add_row(
        ProgressBar(total=max(1, p.max_steps), completed=p.step, width=40),
        Text(f"step {p.step}/{p.max_steps}"),
    )
    grid.add_row(
        Text(f"loss {output.text(p.loss)}  {output.spark(losses)}"),
        Text(f"val_loss {output.text(p.val_loss)}  {output.spark(val_losses)}"),
    )
    speed = f"{p.tokens_per_s:,.0f} tok/s" if p.tokens_per_s else "- tok/s"
    grid.add_row(Text(speed), Text(f"ETA {_eta(p.eta_seconds)}"))
    return Group(grid)


def line(job: Job) -> str:
    """One plain line of progress (no terminal)."""
    p = job.progress
    return (
        f"{job.id} {job.status} step {p.step}/{p.max_steps} loss {output.text(p.loss)} "
        f"val_loss {output.text(p.val_loss)} tok/s {output.text(p.tokens_per_s)} "
        f"eta {_eta(p.eta_seconds)}"
    )


def follow(c: Client, job_id: str, as_json: bool, interval: float = 1.0) -> int:
    """Follow a job until it ends; the exit code of its outcome."""
    losses: list[float] = []
    val_losses: list[float] = []
    last_step = 0
    live = None if (as_json or output.plain()) else Live(console=output.console)
    printed: tuple[str, int] | None = None
    try:
        if live:
            live.start()
        while True:
            job = c.jobs.get(job_id)
            series = c.jobs.metrics(job_id, after_step=last_step, names=["loss", "val_loss"])
            losses += [pt.value for pt in series.get("loss", [])]
            val_losses += [pt.value for pt in series.get("val_loss", [])]
            last_step = max([last_step, *(pt.step for pt in series.get("loss", []))])
            state = (job.status, job.progress.step)
            if live:
                live.update(view(job, losses, val_losses))
            elif state != printed:
                output.emit_json(job) if as_json else print(line(job), flush=True)
                printed = state
            if job.done:
                break
            time.sleep(interval)
    finally:
        if live:
            live.stop()
    if job.error and not as_json:
        output.errors.print(f"{job.error.code}: {job.error.message}", markup=False)
    return EXIT_CODES.get(job.status, 1)


@app.command()
def watch(job_id: str, as_json: AsJson = False) -> None:
    """A live view of a job; exits 0 when it succeeds, 1 when it fails, 3 when cancelled."""
    with client() as c:
        raise typer.Exit(follow(c, job_id, as_json))


def print_event(event: Event, as_json: bool) -> None:
    """One event: JSON, or `time type message`."""
    if as_json:
        output.emit_json(event)
    else:
        stamp = event.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp}  {event.type:<10} {event.message or ''}", flush=True)


@app.command()
def logs(
    job_id: str,
    follow_: Annotated[bool, typer.Option("-f", "--follow", help="follow until it ends")] = False,
    as_json: AsJson = False,
) -> None:
    """The job's event log; with -f, follow it live."""
    last = 0
    with client() as c:
        while True:
            page = c.jobs.events(job_id, after=last, limit=1000)
            for event in page.data:
                print_event(event, as_json)
                last = event.id
            if not page.has_more:
                break
        if follow_:
            for event in c.jobs.stream(job_id, after=last):
                print_event(event, as_json)
