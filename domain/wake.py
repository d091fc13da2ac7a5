"""Wake-ups across processes: the loops sleep until the database says something changed.

On PostgreSQL, triggers (migration 0014) NOTIFY a channel when a transaction commits a change
that a loop acts on: CONTROL for what the control loop's tick reads (jobs, attempts, nodes,
datasets, quotas; not a running job's progress or heartbeats), WEBHOOKS for a new delivery
in the outbox, EVENTS (payload: the job id) for a job's new event or status. A loop waits on
its own connection, LISTENing, and wakes at once; it still wakes on a timer for what only
time changes. Beside SQLite, or while the listening connection is down, `Waiter.wait` sleeps
its poll interval, as the loops did before.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

if TYPE_CHECKING:  # imported where a waiter connects: SQLite never needs it
    import psycopg

log = logging.getLogger(__name__)

CONTROL = "trainyard_control"
WEBHOOKS = "trainyard_webhooks"
EVENTS = "trainyard_events"

# How long one blocking read of the socket lasts, so a stop request is seen this soon.
SLICE_S = 0.25
# After the listening connection failed, how long before trying it again.
RETRY_S = 5.0


def listens(url: str) -> bool:
    """Whether a database at this URL can wake a loop (PostgreSQL), or is polled."""
    return make_url(url).get_backend_name() == "postgresql"


class Waiter:
    """Blocks until one of its channels is notified, the timeout passes, or `stop` is set."""

    def __init__(self, url: str, *channels: str) -> None:
        self.url = make_url(url).set(drivername="postgresql") if listens(url) else None
        self.channels = channels
        self.conn: psycopg.Connection[Any] | None = None
        self.retry_at = 0.0

    @property
    def listening(self) -> bool:
        """Whether a notification wakes this waiter now (else it sleeps its poll interval)."""
        return self._connection() is not None

    def _connection(self) -> psycopg.Connection[Any] | None:
        if self.conn is not None or self.url is None or time.monotonic() < self.retry_at:
            return self.conn
        import psycopg

        try:
            conn = psycopg.connect(
                self.url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
            )
            for channel in self.channels:
                conn.execute(f'LISTEN "{channel}"')
        except psycopg.Error as exc:
            log.warning("cannot listen on %s (%s); polling", ", ".join(self.channels), exc)
            self.retry_at = time.monotonic() + RETRY_S
            return None
        self.conn = conn
        return conn

    def wait(self, timeout: float, poll: float, stop: threading.Event) -> set[str]:
        """The payloads heard (empty when none came): listening, wait up to `timeout` for the
        first notification and take those already queued with it; else sleep `poll` (capped
        by `timeout`)."""
        conn = self._connection()
        if conn is None:
            stop.wait(min(timeout, poll))
            return set()
        import psycopg

        heard: set[str] = set()
        deadline = time.monotonic() + timeout
        try:
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for note in conn.notifies(timeout=min(left, SLICE_S), stop_after=1):
                    heard.add(note.payload)
                if heard:
                    # What else is already queued comes with it: one wake for a burst.
                    for note in conn.notifies(timeout=0):
                        heard.add(note.payload)
                    break
        except psycopg.Error as exc:
            log.warning("lost the listening connection (%s); polling until it is back", exc)
            self.close()
            self.retry_at = time.monotonic() + RETRY_S
            # Whatever was notified meanwhile went unheard: act as if something was.
            heard.add("")
        return heard

    def close(self) -> None:
        """Stop listening."""
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.debug("closing the listening connection failed", exc_info=True)
            self.conn = None
