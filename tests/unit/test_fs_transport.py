"""The embedded file-system broker: messages appear whole, and travel through Celery."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.transport import filesystem

from trainyard.messaging import RUN_ATTEMPT, build_app
from trainyard.settings import Settings
from workers import fs_transport


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url=None, queue_prefix="t.")


@pytest.fixture
def app(settings: Settings) -> Celery:
    return build_app(settings)


def receive(app: Celery, queue: str, timeout: float = 5.0) -> tuple[str, Any]:
    """The task name and args of the next message on a queue."""
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            message = simple.get(timeout=timeout)
            message.ack()
        finally:
            simple.close()
    args, _kwargs, _embed = message.decode()
    return str(message.headers["task"]), args


def test_embedded_app_uses_the_atomic_transport(app: Celery, settings: Settings) -> None:
    assert app.conf.broker_transport == "workers.fs_transport:Transport"
    options = app.conf.broker_transport_options
    assert options["data_folder_in"] == options["data_folder_out"]
    assert Path(options["data_folder_in"]) == settings.broker_folder / "queue"
    assert (settings.broker_folder / "queue").is_dir()
    # kombu keeps exchange tables in a relative `control` folder unless told otherwise.
    assert Path(options["control_folder"]) == settings.broker_folder / "control"


def test_exchange_tables_stay_in_the_broker_folder(app: Celery, settings: Settings) -> None:
    queue = settings.queue("node.a")
    app.send_task(RUN_ATTEMPT, args=[{"n": 1}], queue=queue)
    assert receive(app, queue) == (RUN_ATTEMPT, [{"n": 1}])
    assert list((settings.broker_folder / "control").glob("*.exchange"))


def test_send_and_receive_one_json_payload(app: Celery, settings: Settings) -> None:
    payload = {"attempt_id": "att_1", "job_id": "job_1", "token": "s3cret", "nproc": 2}
    queue = settings.queue("node.a")
    app.send_task(RUN_ATTEMPT, args=[payload], queue=queue)
    assert receive(app, queue) == (RUN_ATTEMPT, [payload])
    assert not list((settings.broker_folder / "queue").iterdir())


def test_queues_do_not_mix(app: Celery, settings: Settings) -> None:
    app.send_task("t.one", args=[{"n": 1}], queue=settings.queue("a"))
    app.send_task("t.two", args=[{"n": 2}], queue=settings.queue("b"))
    assert receive(app, settings.queue("b")) == ("t.two", [{"n": 2}])
    assert receive(app, settings.queue("a")) == ("t.one", [{"n": 1}])


def test_messages_arrive_in_order(app: Celery, settings: Settings) -> None:
    queue = settings.queue("fifo")
    for n in range(5):
        app.send_task("t.n", args=[{"n": n}], queue=queue)
    assert [receive(app, queue)[1][0]["n"] for _ in range(5)] == list(range(5))


def test_no_message_file_is_visible_while_it_is_written(
    app: Celery, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Look at the queue folder at the moment the body is being encoded, i.e. mid-write.
    queue_dir = settings.broker_folder / "queue"
    # The first send also writes the exchange table; do that before spying on writes.
    app.send_task("t.x", args=[{"n": 0}], queue=settings.queue("q"))
    assert receive(app, settings.queue("q")) == ("t.x", [{"n": 0}])
    seen_mid_write: list[list[str]] = []
    encode = fs_transport.str_to_bytes

    def spying(value: Any) -> bytes:
        seen_mid_write.append(sorted(p.name for p in queue_dir.iterdir()))
        return bytes(encode(value))

    monkeypatch.setattr(fs_transport, "str_to_bytes", spying)
    monkeypatch.setattr(filesystem, "str_to_bytes", spying, raising=False)
    app.send_task("t.x", args=[{"n": 1}], queue=settings.queue("q"))
    assert seen_mid_write == [[]]
    assert len(list(queue_dir.iterdir())) == 1


def test_a_reader_never_sees_a_partial_message(app: Celery, settings: Settings) -> None:
    queue_dir = settings.broker_folder / "queue"
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for name in os.listdir(queue_dir):
                try:
                    data = (queue_dir / name).read_bytes()
                except FileNotFoundError:
                    continue
                reads += 1
                try:
                    json.loads(data)
                except ValueError:
                    bad.append(f"{name}: {len(data)} bytes")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    big = {"blob": "x" * 2_000_000}
    try:
        for _ in range(15):
            app.send_task("t.big", args=[big], queue=settings.queue("big"))
    finally:
        stop.set()
        thread.join(10)
    assert reads > 0
    assert bad == []
    assert len(list(queue_dir.iterdir())) == 15
    staging = settings.broker_folder / "staging"
    assert not staging.exists() or not list(staging.iterdir())


def test_messages_with_attempt_tokens_are_readable_by_their_owner_alone(
    app: Celery, settings: Settings
) -> None:
    """A node task's payload holds an attempt token: no other user of the host reads it."""
    app.send_task(RUN_ATTEMPT, args=[{"attempt_id": "att_1", "token": "secret-token"}], queue="q")
    folder = settings.broker_folder
    assert folder.stat().st_mode & 0o777 == 0o700
    for sub in ("queue", "processed", "control"):
        assert (folder / sub).stat().st_mode & 0o777 == 0o700
    assert any(b"secret-token" in p.read_bytes() for p in (folder / "queue").iterdir())
