"""The control process: one leader runs the scheduler and reconciler ticks."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from types import FrameType

from domain import webhooks
from domain.db import get_sessionmaker
from domain.lease import Leadership, hold_lease, release
from domain.reconcile import tick
from trainyard.settings import Settings
from trainyard.storage import Storage

log = logging.getLogger(__name__)


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """Tick while holding the `control` lease; another process takes over if we vanish."""
    stop = stop or threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    # Webhooks go out from their own thread, so a slow receiver never delays scheduling.
    threading.Thread(
        target=webhooks.run, args=(settings, stop), name="webhooks", daemon=True
    ).start()
    holder = f"{socket.gethostname()}:{os.getpid()}"
    ttl = max(5.0, settings.control_interval_seconds * 10)
    storage = Storage.from_settings(settings)
    leader: Leadership | None = None
    factory = get_sessionmaker()
    swept = -math.inf
    while not stop.is_set():
        try:
            with factory() as session:
                now_leader = hold_lease(session, "control", holder, ttl)
                if (now_leader is None) != (leader is None):
                    epoch = f" (epoch {now_leader.epoch})" if now_leader else ""
                    log.info(
                        "control loop %s leadership%s", "took" if now_leader else "lost", epoch
                    )
                leader = now_leader
                if leader is not None:
                    sweep = time.monotonic() - swept >= settings.control_sweep_seconds
                    tick(session, storage, settings, leader, sweep=sweep)
                    if sweep:
                        swept = time.monotonic()
        except Exception:
            log.exception("control tick failed")
        stop.wait(settings.control_interval_seconds)
    if leader is not None:
        # Hand over at once rather than after the lease runs out.
        with factory() as session:
            release(session, "control", holder)
