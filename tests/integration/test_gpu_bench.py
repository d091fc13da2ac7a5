"""bench/gpu.py --smoke: the GPU script runs end to end on CPU, so no typo costs GPU time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_script_smoke_run_passes_every_check_it_can(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept\n")
    env = {**os.environ, "TRAINYARD_DATA_DIR": str(tmp_path / "unused")}
    proc = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--results", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = results.read_text()
    assert table.startswith("# Results\n\nkept\n")  # the rest of the file is kept
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    checks = {row.split(" | ")[0].strip("| ") for row in rows[1:]}
    assert checks == {"1", "2", "3", "4", "5", "6", "7"}
    assert "**no**" not in table
    assert "bit-exact" in table  # the resume after SIGTERM
    assert "sharded: True" in table  # FSDP over a group of one
    # Written a second time, the section is replaced rather than appended.
    subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--only", "3", "--results", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert results.read_text().count("<!-- gpu.py:begin -->") == 1
