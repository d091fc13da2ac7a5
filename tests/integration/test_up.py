"""`trainyard up`, the embedded default: a process of it that dies is restarted and the
platform stays up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from trainyard.net import free_port

pytestmark = pytest.mark.integration


def children(pid: int, marker: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(pid), "-f", marker], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def test_a_killed_node_worker_is_restarted_and_the_api_stays_up(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_") or k == "PYTHONPATH"
    }
    env.update(TRAINYARD_DATA_DIR=str(tmp_path / "data"), TRAINYARD_NODE_SLOTS="1")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "trainyard.cli", "up", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not children(up.pid, "worker node"):
            assert time.monotonic() < deadline and up.poll() is None, (
                tmp_path / "up.log"
            ).read_text()
            time.sleep(0.5)
        (first,) = children(up.pid, "worker node")
        os.kill(first, signal.SIGKILL)
        while True:
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            again = children(up.pid, "worker node")
            if again and again != [first]:
                break
            time.sleep(0.3)
        while True:
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert (
            "the node process exited with code -9; restarting it"
            in (tmp_path / "up.log").read_text()
        )
    finally:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
