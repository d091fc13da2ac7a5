"""The commands for people who use a trainyard API: login, datasets, jobs, models.

Every command takes --json; without a terminal, output is plain lines.
"""

from __future__ import annotations

from typing import Annotated

import httpx
import typer

from trainyard.client import Client, TrainyardError
from trainyard.console import config, datasets, jobs, models, output

# click's error for bad usage (typer may vendor click, so take it from typer's own class).
UsageProblem: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)

app = typer.Typer(
    name="trainyard",
    help="Train language models on a trainyard platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    epilog="The commands that run the platform (db, keys, api, control, worker, up, demo) "
    "take --help too.",
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(models.app, name="models")


@app.command()
def login(
    url: Annotated[str, typer.Option(help="the API's address")] = config.DEFAULT_URL,
    key: Annotated[
        str | None, typer.Option(help="API key (asked for when not given)", show_default=False)
    ] = None,
) -> None:
    """Check an API URL and key, then store them (mode 0600) for later commands."""
    key = key or typer.prompt("API key", hide_input=True)
    with Client(url, key, max_retries=1) as c:
        c.jobs.list(limit=1)  # raises on a wrong key or an unreachable URL
    path = config.save(url.rstrip("/"), key)
    print(f"logged in to {url}; credentials stored in {path}")


def run(argv: list[str]) -> int:
    """Run one user command; API and connection errors become messages and exit code 1."""
    try:
        code = app(argv, prog_name="trainyard", standalone_mode=False)
    except TrainyardError as exc:
        details = f" ({exc.details})" if exc.details else ""
        output.errors.print(
            f"error: {exc.code} (HTTP {exc.status}): {exc.message}{details}",
            markup=False,
            soft_wrap=True,
        )
        return 1
    except httpx.TransportError as exc:
        url, _ = config.load()
        output.errors.print(
            f"error: cannot reach the API at {url} ({exc}); start it with `trainyard up`, "
            "or set TRAINYARD_API_URL / run `trainyard login`",
            markup=False,
            soft_wrap=True,
        )
        return 1
    except typer.Abort:
        return 130
    except UsageProblem as exc:
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    return code if isinstance(code, int) else 0
