"""A bounded pool of worker processes for the calls that load a model (generate, import).

The API process never loads a model itself: a crafted model or a slow generation can then
only take a worker, never the API or the threads its other requests need. Each worker has
a memory limit and each call a time limit (pebble kills the worker past it); the pool
takes `model_workers + model_queue` calls at once and `model_calls_per_project` from one
project, and answers 429 with Retry-After beyond that.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pebble import ProcessExpired, ProcessPool

from api.errors import ApiError
from domain import model_calls
from trainyard.settings import Settings, get_settings

RETRY_AFTER_SECONDS = 2


class ModelPool:
    """The worker processes and who is using them (in this API process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.capacity = settings.model_workers + settings.model_queue
        self.busy: Counter[str] = Counter()
        self._pool: ProcessPool | None = None

    def _processes(self) -> ProcessPool:
        if self._pool is None:  # started on first use: most API processes never need it
            self._pool = ProcessPool(
                max_workers=self.settings.model_workers,
                initializer=model_calls.limit_memory,
                initargs=(self.settings.model_worker_memory_bytes,),
                # A fresh interpreter: forking the API would copy its loop, threads and pools.
                context=multiprocessing.get_context("spawn"),
            )
        return self._pool

    def _admit(self, project_id: str) -> None:
        per_project = self.settings.model_calls_per_project
        if self.busy[project_id] >= per_project:
            raise ApiError(
                429,
                "too_many_model_calls",
                f"this project already has {per_project} model calls running; retry shortly",
                {"limit": per_project},
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if self.busy.total() >= self.capacity:
            raise ApiError(
                429,
                "model_workers_busy",
                "every model worker is busy; retry shortly",
                {"capacity": self.capacity},
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    async def run(self, project_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a worker under the limits; its result."""
        self._admit(project_id)
        self.busy[project_id] += 1
        seconds = self.settings.model_call_seconds
        try:
            future = self._processes().schedule(fn, args=args, timeout=seconds)
            return await asyncio.wrap_future(future)
        except FutureTimeout as exc:
            raise ApiError(
                504,
                "model_call_timeout",
                f"the model call took longer than its limit of {seconds:g} s",
                {"limit_seconds": seconds},
            ) from exc
        except (MemoryError, ProcessExpired) as exc:
            gib = self.settings.model_worker_memory_bytes / 1024**3
            raise ApiError(
                422,
                "model_too_large",
                f"the model call ran out of its memory limit ({gib:g} GiB)",
                {"limit_bytes": self.settings.model_worker_memory_bytes},
            ) from exc
        finally:
            self.busy[project_id] -= 1
            if self.busy[project_id] <= 0:
                del self.busy[project_id]

    def close(self) -> None:
        """Stop the worker processes (at shutdown)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None


_pool: ModelPool | None = None


def get_pool() -> ModelPool:
    """This API process's model pool."""
    global _pool
    if _pool is None:
        _pool = ModelPool(get_settings())
    return _pool
