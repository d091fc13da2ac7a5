"""Per-key token buckets and per-project caps on live event streams, one budget for every API
process of a deployment.

With a Redis broker (every real deployment), the buckets and the open streams live in that
Redis, changed by short Lua scripts (atomic: two API processes never spend the same token
or take the last stream slot twice; the clock is the Redis server's, so hosts whose clocks
differ still agree). Each open stream holds a lease that its process renews; a process that
dies stops renewing, and its slots free themselves within `event_stream_lease_seconds`.
The embedded default has no Redis: buckets and streams are counted in the process.

When Redis does not answer (a restart, a network blip), the checks fall back to this
process's own buckets and counts, and Redis is tried again after `RETRY_SECONDS`. The
limits stay on (each process still holds every key to a full budget of its own, so N API
processes allow at most N times a budget), and no request fails because the limiter
cannot reach its store: a Redis outage must not become an API outage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import token_bucket
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from trainyard.settings import Settings

log = logging.getLogger(__name__)

# After a failed call, Redis is left alone this long; the process counts on its own meanwhile.
RETRY_SECONDS = 2.0
# How long one call to Redis may take before it counts as an outage.
REDIS_TIMEOUT_SECONDS = 1.0

# KEYS[1] a bucket (hash: tokens, at); ARGV rate per second, burst. Spends one token if
# there is one. Returns {1 or 0, tokens left} (a string: Lua numbers come back truncated).
TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
-- A bucket left alone refills completely in burst / rate seconds; then it can go.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens)}
"""

# KEYS[1] a project's open streams (sorted set: stream -> end of its lease, in ms);
# ARGV cap, stream, lease in ms. Drops expired leases, then takes a slot if one is free.
OPEN_STREAM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1], ARGV[1] stream, ARGV[2] lease in ms: the stream is still open. It is added back
# if Redis lost it (a restart): an open stream always counts, even past the cap.
RENEW_STREAM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- No lease in the set ends later than this one.
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class SharedStore:
    """The Redis every API process of a deployment counts in, or none (embedded)."""

    def __init__(self) -> None:
        self.redis: Redis | None = None
        self.prefix = ""
        self.down_until = 0.0
        self.scripts: dict[str, Any] = {}

    def configure(self, settings: Settings) -> None:
        """Use the broker's Redis if the broker is Redis; count in the process otherwise."""
        self.redis = None
        self.down_until = 0.0
        url = settings.resolved_broker_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return
        self.redis = Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            # One immediate retry (a pooled connection that a Redis restart closed), no
            # backoff: a request never waits on a Redis that is away.
            retry=Retry(NoBackoff(), 1),
        )
        # Deployments sharing one Redis are kept apart by their queue prefix.
        self.prefix = f"{settings.queue_prefix}trainyard:"
        self.scripts = {
            "take": self.redis.register_script(TAKE_TOKEN),
            "open": self.redis.register_script(OPEN_STREAM),
            "renew": self.redis.register_script(RENEW_STREAM),
        }

    async def call(self, script: str, key: str, *args: str | int | float) -> Any:
        """Run one script on `prefix + key`; None when there is no Redis or it is not
        answering (the caller then counts in the process)."""
        if self.redis is None or time.monotonic() < self.down_until:
            return None
        try:
            answer = await self.scripts[script](keys=[self.prefix + key], args=list(args))
        except (RedisError, OSError) as exc:
            if not self.down_until:
                log.warning(
                    "rate limits: Redis is not answering (%s); counting in this process", exc
                )
            self.down_until = time.monotonic() + RETRY_SECONDS
            return None
        if self.down_until:
            log.warning("rate limits: Redis answers again; counting there")
            self.down_until = 0.0
        return answer

    async def close(self) -> None:
        """Close the connections (at shutdown)."""
        if self.redis is not None:
            await self.redis.aclose()


@dataclass(frozen=True)
class Rate:
    """A token bucket's refill rate (tokens per second) and capacity (the burst)."""

    per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Read "10/s:50" (10 a second, bursts of 50)."""
        rate, _, burst = text.partition(":")
        per_second = float(rate.removesuffix("/s"))
        if not per_second > 0 or not math.isfinite(per_second):
            raise ValueError(f"a rate must be a positive number per second, got {text!r}")
        return cls(per_second, int(burst or max(1, math.ceil(per_second))))


class Buckets:
    """One token bucket per (API key, budget): in the shared Redis, or in this process."""

    def __init__(self, rates: dict[str, Rate], shared: SharedStore) -> None:
        self.rates = rates
        self.shared = shared
        self.storage = token_bucket.MemoryStorage()
        self.limiters = {
            budget: token_bucket.Limiter(rate.per_second, rate.burst, self.storage)
            for budget, rate in rates.items()
        }

    async def take(self, budget: str, key: str) -> tuple[bool, dict[str, str]]:
        """Spend one token; whether it was there, and the RateLimit-* headers to send."""
        rate = self.rates[budget]
        bucket = f"rate:{budget}:{key}"
        answer = await self.shared.call("take", bucket, rate.per_second, rate.burst)
        if answer is not None:
            allowed, left = bool(int(answer[0])), float(answer[1])
        else:
            allowed = self.limiters[budget].consume(bucket)
            left = self.storage.get_token_count(bucket)
        # Seconds until the bucket holds one whole token again (0 while it does).
        wait = max(0.0, (1.0 - left) / rate.per_second)
        headers = {
            "RateLimit-Limit": str(rate.burst),
            "RateLimit-Remaining": str(max(0, math.floor(left))),
            "RateLimit-Reset": str(math.ceil(wait)),
            "RateLimit-Policy": f"{rate.burst};w={math.ceil(rate.burst / rate.per_second)}",
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return allowed, headers


class StreamSlot:
    """One open event stream's place under its project's cap."""

    def __init__(self, streams: Streams, project_id: str, shared: bool) -> None:
        self.streams = streams
        self.project_id = project_id
        self.shared = shared  # held in Redis, else in this process's count
        self.name = f"{os.getpid()}-{uuid.uuid4().hex}"

    async def keep(self) -> None:
        """Renew the lease while the stream is open (run as a task, cancelled at close)."""
        if not self.shared:
            return
        while True:
            await anyio.sleep(self.streams.lease / 3)
            await self.streams.store.call(
                "renew", self.streams.key(self.project_id), self.name, self.streams.lease_ms
            )

    async def close(self) -> None:
        """Give the slot back; safe to call from a stream that is being cancelled."""
        if not self.shared:
            self.streams.local[self.project_id] -= 1
            if self.streams.local[self.project_id] <= 0:
                del self.streams.local[self.project_id]
            return
        store = self.streams.store
        if store.redis is None:
            return
        # Shielded: a stream ends when its client leaves, often by cancellation. If Redis
        # is away, the slot's lease runs out instead.
        key = store.prefix + self.streams.key(self.project_id)
        with (
            anyio.move_on_after(REDIS_TIMEOUT_SECONDS, shield=True),
            contextlib.suppress(RedisError, OSError),
        ):
            await store.redis.zrem(key, self.name)


class Streams:
    """How many live event streams each project holds open, against the cap."""

    def __init__(self, store: SharedStore) -> None:
        self.store = store
        self.cap = 16
        self.lease = 30.0
        self.local: Counter[str] = Counter()

    def configure(self, settings: Settings) -> None:
        """Read the cap and the lease from the settings."""
        self.cap = settings.event_streams_per_project
        self.lease = settings.event_stream_lease_seconds

    @property
    def lease_ms(self) -> int:
        """The lease in milliseconds."""
        return max(1, round(self.lease * 1000))

    @staticmethod
    def key(project_id: str) -> str:
        """The project's set of open streams."""
        return f"streams:{project_id}"

    async def open(self, project_id: str) -> StreamSlot | None:
        """A slot for one more stream of the project, or None at the cap."""
        slot = StreamSlot(self, project_id, shared=False)
        answer = await self.store.call(
            "open", self.key(project_id), self.cap, slot.name, self.lease_ms
        )
        if answer is not None:
            if not int(answer):
                return None
            slot.shared = True
            return slot
        if self.local[project_id] >= self.cap:
            return None
        self.local[project_id] += 1
        return slot


shared_store = SharedStore()
streams = Streams(shared_store)


def configure(settings: Settings) -> None:
    """Point the limits at this deployment's Redis (or none) and read the caps."""
    shared_store.configure(settings)
    streams.configure(settings)
