"""The fork server's lifetimes: out of the node worker's process group and deaf to SIGTERM,
restarted when it dies, its running ranks unharmed by its death, and everything gone when
the node worker is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.trainer.trainer_testkit import make_dataset, read_events, run_config, write_config
from tests.unit.test_launcher import alive, group_members
from trainer.config import EXIT_PREEMPTED
from workers.forkserver import ForkServer
from workers.launcher import EventFollower, trainer_env, trainer_environ

ROOT = Path(__file__).resolve().parents[2]


def endless(tmp_path: Path) -> Path:
    """A run.json for a tiny model that trains until stopped."""
    tok, data = make_dataset(tmp_path)
    cfg = run_config(tmp_path, "job", tok, data, max_steps=100_000, checkpoint_interval=100_000)
    config = Path(cfg["output_dir"]) / "run.json"
    write_config(cfg, config)
    return config


def steps(config: Path) -> int:
    """Steps the run has reported so far (a half-written last line waits)."""
    events = EventFollower(config.parent / "events.jsonl").read()
    return sum(1 for e in events if e["type"] == "step")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_server_ignores_the_node_workers_signals_and_comes_back_when_killed(
    tmp_path: Path,
) -> None:
    config = endless(tmp_path)
    server = ForkServer()
    server.start()
    first = server.pid
    assert first is not None
    # Its own session: a SIGTERM to the node worker's group (a host shutting down) is not
    # for it; and one sent to it anyway changes nothing.
    assert os.getsid(first) == first != os.getsid(0)
    group = server.launch(
        config, 1, env=trainer_env(trainer_environ()), cwd=config.parent, log=tmp_path / "t.log"
    )
    try:
        wait_until(lambda: steps(config) >= 2, 120, "the first steps")
        os.kill(first, signal.SIGTERM)
        time.sleep(0.5)
        assert alive(first)

        # Killed, it is started again; the ranks it forked before go on training.
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server.pid not in (None, first) and server.starts == 2, 30, "a restart")
        trained = steps(config)
        wait_until(lambda: steps(config) > trained + 2, 60, "training after the server's death")
        assert group.poll() is None
        os.killpg(group.pid, signal.SIGTERM)  # as Launch.stop does
        assert group.wait(60) == EXIT_PREEMPTED  # checkpointed, and reported by its agent
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
    assert read_events(str(config.parent))[-1]["type"] == "preempted"

    # The new server takes launches (this config is refused by the trainer at once).
    broken = tmp_path / "broken" / "run.json"
    broken.parent.mkdir()
    broken.write_text("{}")
    log = tmp_path / "broken.log"
    again = server.launch(broken, 1, env=trainer_env(trainer_environ()), cwd=broken.parent, log=log)
    assert again.wait(120) == 1
    assert "invalid config" in log.read_text()
    os.kill(server.pid or 0, signal.SIGKILL)


# A node worker in miniature: starts a fork server, launches ranks, says who they are.
NODE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workers.forkserver import ForkServer
    from workers.launcher import trainer_env, trainer_environ
    config = Path(sys.argv[1])
    server = ForkServer()
    server.start()
    env = trainer_env(trainer_environ())
    group = server.launch(config, 2, env=env, cwd=config.parent, log=config.parent / "t.log")
    print(server.pid, group.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_killed_node_worker_takes_the_server_agent_and_ranks_with_it(tmp_path: Path) -> None:
    config = endless(tmp_path)
    node = subprocess.Popen(
        [sys.executable, "-c", NODE, str(config)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        assert node.stdout is not None
        server, agent = (int(p) for p in node.stdout.readline().split())
        wait_until(lambda: steps(config) >= 2, 120, "the first steps")
        ranks = group_members(agent)
        assert agent in ranks and len(ranks) == 3  # the agent and its two ranks
    finally:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    wait_until(
        lambda: not alive(server) and not group_members(agent), 15, "everything to die with it"
    )
