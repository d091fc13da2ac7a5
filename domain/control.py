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

from domain import wake, webhooks
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
    # A leader renews the lease on every tick, and ticks at least once a sweep.
    ttl = max(5.0, settings.control_interval_seconds * 10, settings.control_sweep_seconds * 2.5)
    storage = Storage.from_settings(settings)
    leader: Leadership | None = None
    factory = get_sessionmaker()
    swept = -math.inf
    # Between sweeps the loop sleeps until a change it acts on is committed (PostgreSQL),
    # or polls every control_interval_seconds (SQLite). Listening starts before the first
    # tick, so nothing committed after that tick's reads goes unheard.
    waiter = wake.Waiter(settings.resolved_database_url, wake.CONTROL)
    waiter.listening  # noqa: B018 - connects
    while not stop.is_set():
        failed = False
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
            failed = True
        # A leader wakes for its next sweep; a standby looks at the lease every interval, as
        # before, so that it takes over as soon as a dead leader's lease runs out. After a
        # failure the loop waits an interval before trying again.
        next_sweep = swept + settings.control_sweep_seconds - time.monotonic()
        timeout = next_sweep if leader is not None else settings.control_interval_seconds
        if failed:
            timeout = max(timeout, settings.control_interval_seconds)
        waiter.wait(max(0.0, timeout), settings.control_interval_seconds, stop)
    waiter.close()
    if leader is not None:
        # Hand over at once rather than after the lease runs out.
        with factory() as session:
            release(session, "control", holder)
