"""Event streams wake when their job has news, not on a timer.

On PostgreSQL a connection of this process LISTENs on domain.wake.EVENTS: a new event of a
job, or a change of its step or status, NOTIFYs the job's id on commit, and every stream
following that job looks at the database again. Until it is listening, after it drops, and
beside SQLite, the streams poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.engine import make_url

from domain import wake
from trainyard.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Listening, a stream looks again at least this often even when nothing woke it.
IDLE_S = 2.0
# After the listening connection failed, how long before the next stream tries it again.
RETRY_S = 5.0


async def listen(
    channel: str,
    on_notify: Callable[[Any, int, str, str], None],
    on_lost: Callable[[Any], None],
    what: str,
    meanwhile: str,
) -> Any:
    """A connection of its own LISTENing on a channel (`on_lost` is called if it drops); None
    after a warning when the database cannot be reached, and a pause so that the caller's
    next try comes no sooner."""
    import asyncpg

    url = make_url(get_settings().resolved_database_url).set(drivername="postgresql")
    try:
        conn = await asyncpg.connect(url.render_as_string(hide_password=False))
        await conn.add_listener(channel, on_notify)
        conn.add_termination_listener(on_lost)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("cannot listen for %s (%s); %s", what, exc, meanwhile)
        await asyncio.sleep(RETRY_S)
        return None
    return conn


class News:
    """One stream's wake-up: set when its job has news; cleared before each look."""

    def __init__(self, hub: JobWakeups) -> None:
        self.hub = hub
        self.flag = asyncio.Event()

    def clear(self) -> None:
        """Call before reading the database: what commits after this wakes the next wait."""
        self.flag.clear()

    async def wait(self, poll: float) -> None:
        """Until the job has news (listening; at most IDLE_S), else `poll` seconds."""
        if not self.hub.listening:
            self.hub.listen()
            await asyncio.sleep(poll)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flag.wait(), timeout=IDLE_S)


class JobWakeups:
    """This process's streams, by job id, and the connection that wakes them."""

    def __init__(self) -> None:
        self.waiting: dict[str, set[News]] = {}
        self.enabled = False
        self.listening = False
        self.conn: Any = None
        self._starting: asyncio.Task[None] | None = None

    def configure(self, settings: Settings) -> None:
        """Listen only where the database can notify (PostgreSQL)."""
        self.enabled = wake.listens(settings.resolved_database_url)

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[News]:
        """A stream's News for this job, for as long as the stream lasts."""
        news = News(self)
        self.waiting.setdefault(job_id, set()).add(news)
        try:
            yield news
        finally:
            followers = self.waiting.get(job_id)
            if followers is not None:
                followers.discard(news)
                if not followers:
                    del self.waiting[job_id]

    def listen(self) -> None:
        """Start listening in the background (at most one try at a time)."""
        if not self.enabled or self.listening:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        conn = await listen(wake.EVENTS, self._on_news, self._on_lost, "job events", "streams poll")
        if conn is not None:
            self.conn, self.listening = conn, True
            self._wake_all()  # what committed before now was not heard

    def _on_news(self, _conn: Any, _pid: int, _channel: str, job_id: str) -> None:
        for news in self.waiting.get(job_id, ()):
            news.flag.set()

    def _on_lost(self, _conn: Any) -> None:
        self.listening, self.conn = False, None
        self._wake_all()

    def _wake_all(self) -> None:
        for followers in self.waiting.values():
            for news in followers:
                news.flag.set()

    async def close(self) -> None:
        """Stop listening (at shutdown)."""
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self.conn is not None:
            await self.conn.close()
        self.listening, self.conn = False, None


job_wakeups = JobWakeups()
