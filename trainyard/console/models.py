"""`trainyard models`: list, show, download files, and chat with a fine-tuned model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID

from trainyard.console import output
from trainyard.console.config import client
from trainyard.console.options import After, AsJson, Limit

app = typer.Typer(help="Trained and imported models.", no_args_is_help=True)


@app.command("list")
def list_(limit: Limit = 20, after: After = None, as_json: AsJson = False) -> None:
    """The project's models, newest first."""
    with client() as c:
        page = c.models.list(limit=limit, after=after)
    if as_json:
        output.emit_json(page)
        return
    output.table(
        ["id", "name", "arch", "job", "created"],
        [(m.id, m.name, m.arch, m.job_id, m.created_at.isoformat()) for m in page.data],
    )


@app.command()
def show(model_id: str, as_json: AsJson = False) -> None:
    """A model, its configuration and its files."""
    with client() as c:
        model = c.models.get(model_id)
    if as_json:
        output.emit_json(model)
        return
    output.fields(
        [
            ("id", model.id),
            ("name", model.name),
            ("arch", model.arch),
            ("job", model.job_id),
            ("created", model.created_at.isoformat()),
        ]
    )
    output.table(["file", "bytes"], [(f.name, f.bytes) for f in model.files])


@app.command()
def download(
    model_id: str,
    output_dir: Annotated[Path, typer.Option("-o", "--output", help="folder to write")] = Path("."),
    file: Annotated[list[str] | None, typer.Option(help="only these files")] = None,
    as_json: AsJson = False,
) -> None:
    """Download a model's files (a Hugging Face folder) into a folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    with client() as c:
        names = file or [f.name for f in c.models.get(model_id).files]
        for name in names:
            target = output_dir / name
            if as_json or output.plain():
                c.models.download(model_id, name, target)
            else:
                with Progress(
                    *Progress.get_default_columns()[:1],
                    BarColumn(),
                    DownloadColumn(),
                    console=output.console,
                ) as bar:
                    task = bar.add_task(name, total=None)

                    def advance(got: int, total: int, task: TaskID = task) -> None:
                        bar.update(task, completed=got, total=total or None)

                    c.models.download(model_id, name, target, on_progress=advance)
            written.append(str(target))
    if as_json:
        output.emit_json({"model_id": model_id, "files": written})
    else:
        for path in written:
            print(path)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="a chat model's id or name")],
    system: Annotated[str | None, typer.Option(help="a system message")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    as_json: AsJson = False,
) -> None:
    """Chat with a fine-tuned chat model, its reply printed as it is sampled: one message a
    line; an empty line, /exit or end of input stops. The whole conversation goes with each
    message."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = not output.plain() and not as_json
    with client() as c:
        while True:
            try:
                said = output.console.input("[bold]you>[/] ") if interactive else input()
            except EOFError:
                break
            if not said.strip() or said.strip() == "/exit":
                break
            messages.append({"role": "user", "content": said})
            pieces = c.models.chat_stream(
                model, messages, max_tokens=max_new_tokens, temperature=temperature
            )
            if as_json:
                text = "".join(pieces)
                output.emit_json({"model": model, "text": text})
            else:
                if interactive:
                    output.console.print("[bold]model>[/] ", end="")
                text = ""
                for piece in pieces:
                    text += piece
                    # Plain text as it comes: no markup, no carriage returns.
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                print(flush=True)
            messages.append({"role": "assistant", "content": text})
