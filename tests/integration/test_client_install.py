"""`pip install trainyard` alone gives the SDK and the CLI, without torch or the server's
packages, and that CLI works against a real platform."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT, Stack

pytestmark = pytest.mark.integration

SERVER_ONLY = ["torch", "fastapi", "sqlalchemy", "celery", "uvicorn", "alembic", "tokenizers"]


def run(*args: str | Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert out.returncode == 0, f"{args} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.timeout(600)
def test_base_install_has_no_torch_and_its_cli_lists_jobs(stack: Stack, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        wheels,
        ROOT,
    )
    (wheel,) = wheels.glob("trainyard-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_ = venv / "bin"
    run(bin_ / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)

    probe = "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])"
    assert run(bin_ / "python", "-c", probe, *SERVER_ONLY).split() == []
    assert run(bin_ / "python", "-c", probe, "httpx", "typer", "rich").split() == [
        "httpx",
        "typer",
        "rich",
    ]

    key = stack.new_key("base-install")
    # A clean environment: nothing of this checkout on the path, only the installed package.
    env = {
        "PATH": f"{bin_}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TRAINYARD_API_URL": stack.url,
        "TRAINYARD_API_KEY": key,
    }
    listed = run(bin_ / "trainyard", "jobs", "list", env=env, timeout=60)
    assert listed.splitlines()[0].split("\t")[:4] == ["id", "name", "type", "status"]

    # The platform's commands say what to install rather than failing with a traceback.
    up = subprocess.run(
        [bin_ / "trainyard", "up"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert up.returncode == 1 and "trainyard[platform,trainer]" in up.stderr, up.stderr
