"""The launcher: events.jsonl read a whole line at a time, and a process group stopped whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workers.launcher import EventFollower, Launch, trainer_env


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_a_missing_file_has_no_events(tmp_path: Path) -> None:
    assert EventFollower(tmp_path / "events.jsonl").read() == []


def test_only_complete_lines_are_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    line = json.dumps({"type": "step", "step": 1, "loss": 2.5}).encode() + b"\n"
    append(path, line[:10])
    assert follower.read() == []
    append(path, line[10:-1])
    assert follower.read() == []
    append(path, b"\n")
    assert follower.read() == [{"type": "step", "step": 1, "loss": 2.5}]
    assert follower.read() == []


def test_several_lines_and_a_partial_one_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    events = [{"type": "step", "step": n} for n in range(1, 4)]
    data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    append(path, data + b'{"type": "eval", "st')
    assert follower.read() == events
    append(path, b'ep": 3}\n\n')
    assert follower.read() == [{"type": "eval", "step": 3}]


def test_a_multibyte_character_split_across_writes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    line = json.dumps({"type": "log", "message": "naïve ☃"}, ensure_ascii=False).encode() + b"\n"
    cut = line.index("☃".encode()) + 1
    append(path, line[:cut])
    assert follower.read() == []
    append(path, line[cut:])
    assert follower.read() == [{"type": "log", "message": "naïve ☃"}]


def test_an_unreadable_line_becomes_a_log_event(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"type": "start"}\nnot json\n')
    events = EventFollower(path).read()
    assert events[0] == {"type": "start"}
    assert events[1]["type"] == "log" and "unreadable" in events[1]["message"]


def test_many_small_writes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = EventFollower(path)
    data = b"".join(json.dumps({"type": "step", "step": n}).encode() + b"\n" for n in range(50))
    seen = []
    for i in range(0, len(data), 7):
        append(path, data[i : i + 7])
        seen += follower.read()
    assert [e["step"] for e in seen] == list(range(50))


# A parent that ignores SIGTERM and starts a grandchild that ignores it too; both print their
# pid and then sleep, so only SIGKILL to the whole group ends them.
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(600)
    """
)
GRANDCHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
# A parent that exits on SIGTERM at once, leaving its stubborn grandchild behind.
POLITE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def launch_of(script: str, tmp_path: Path) -> tuple[Launch, int]:
    """A Launch around a small Python program instead of torchrun; and its grandchild's pid."""
    launch = Launch.__new__(Launch)
    launch.folder = tmp_path
    launch.log_path = tmp_path / "train.log"
    launch.log = launch.log_path.open("ab")
    launch.proc = subprocess.Popen(
        [sys.executable, "-c", script, GRANDCHILD],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert launch.proc.stdout is not None
    grandchild = int(launch.proc.stdout.readline())
    time.sleep(0.3)  # let the grandchild install its SIGTERM handler
    return launch, grandchild


def wait_until_gone(pids: list[int], pgid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids) and not group_members(pgid):
            return
        time.sleep(0.05)
    raise AssertionError(f"still alive: {[p for p in pids if alive(p)]}, {group_members(pgid)}")


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    launch, grandchild = launch_of(STUBBORN, tmp_path)
    pgid = launch.proc.pid
    assert os.getpgid(grandchild) == pgid
    started = time.monotonic()
    try:
        code = launch.stop(grace_s=0.5)
    finally:
        launch.close()
    elapsed = time.monotonic() - started
    assert code == -signal.SIGKILL
    assert 0.4 <= elapsed < 5, elapsed
    wait_until_gone([pgid, grandchild], pgid)


def test_stop_kills_what_outlives_the_leader(tmp_path: Path) -> None:
    launch, grandchild = launch_of(POLITE, tmp_path)
    pgid = launch.proc.pid
    started = time.monotonic()
    try:
        code = launch.stop(grace_s=5.0)
    finally:
        launch.close()
    assert code == -signal.SIGTERM
    assert time.monotonic() - started < 4  # no waiting out the grace once the leader is gone
    wait_until_gone([pgid, grandchild], pgid)


def test_close_kills_the_whole_group(tmp_path: Path) -> None:
    launch, grandchild = launch_of(STUBBORN, tmp_path)
    pgid = launch.proc.pid
    launch.close()
    launch.proc.wait(5)
    wait_until_gone([pgid, grandchild], pgid)
    assert launch.log.closed


def test_the_trainer_inherits_none_of_the_platform_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node secret and the broker's password stay with the node worker. (Under torchrun,
    where /proc shows the environment; forked ranks are given the same one.)"""
    monkeypatch.setenv("TRAINYARD_NODE_SECRET", "node-secret-value")
    monkeypatch.setenv("TRAINYARD_BROKER_URL", "redis://:broker-password@127.0.0.1:6379/0")
    monkeypatch.setenv("HOME_FOR_TEST", "kept")
    launch = Launch(tmp_path / "run.json", 1, warm=False)
    try:
        environ = Path(f"/proc/{launch.proc.pid}/environ").read_bytes()
    finally:
        launch.close()
        launch.proc.wait(10)
    assert b"HOME_FOR_TEST=kept" in environ
    assert b"TRAINYARD_" not in environ
    assert b"node-secret-value" not in environ and b"broker-password" not in environ


def test_forked_ranks_train_and_checkpoint_on_sigterm(tmp_path: Path) -> None:
    """Two ranks forked from the warm fork server: a real gloo run; SIGTERM to the group
    makes them checkpoint and exit with the trainer's preempted code."""
    from tests.trainer.trainer_testkit import make_dataset, read_events, run_config, write_config
    from trainer.config import EXIT_PREEMPTED

    tok, data = make_dataset(tmp_path)
    cfg = run_config(tmp_path, "job", tok, data, max_steps=100_000, checkpoint_interval=100_000)
    config = Path(cfg["output_dir"]) / "run.json"
    write_config(cfg, config)
    launch = Launch(config, 2)
    try:
        assert launch.proc.pid != os.getpid() and os.getpgid(launch.proc.pid) == launch.proc.pid
        deadline = time.monotonic() + 120
        events_file = Path(cfg["output_dir"]) / "events.jsonl"
        while not events_file.exists() or "step" not in events_file.read_text():
            assert launch.poll() is None, launch.log_tail()
            assert time.monotonic() < deadline, launch.log_tail()
            time.sleep(0.1)
        code = launch.stop(grace_s=60)
    finally:
        launch.close()
    events = read_events(cfg["output_dir"])
    assert code == EXIT_PREEMPTED, launch.log_tail()
    assert events[0]["type"] == "start" and events[0]["world_size"] == 2
    assert events[-1]["type"] == "preempted" and Path(events[-1]["checkpoint"]).is_dir()


def test_ranks_spin_briefly_unless_the_node_chose_how_openmp_waits() -> None:
    """A short OpenMP spin and MKL's strict mode by default; a node's own choice is kept."""
    env = trainer_env({"PATH": "/bin"})
    assert env["GOMP_SPINCOUNT"] == "10000" and env["MKL_CBWR"] == "AUTO,STRICT"
    assert "OMP_WAIT_POLICY" not in env
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    # Either variable is the node's choice: no spin count is added beside a policy, which
    # it would override.
    passive = trainer_env({"OMP_WAIT_POLICY": "PASSIVE"})
    assert passive["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in passive
    assert trainer_env({"GOMP_SPINCOUNT": "0"})["GOMP_SPINCOUNT"] == "0"
    assert trainer_env({"MKL_CBWR": "AVX2"})["MKL_CBWR"] == "AVX2"
