"""A bounded pool of worker processes for the calls that load a model (generate, chat
completions, import).

The API process never loads a model itself: a crafted model or a slow generation can then
only take a worker, never the API or the threads its other requests need. Each worker has
a memory limit and each call a time limit (pebble kills the worker past it); the pool
takes `model_workers + model_queue` calls at once and `model_calls_per_project` from one
project, and answers 429 with Retry-After beyond that.

A streamed call (`stream`) hands the worker a queue of a multiprocessing manager, and the
API reads the pieces from it as the worker puts them; closing the stream early (the client
went away) stops the worker's call.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.managers import SyncManager
from typing import Any

from pebble import ProcessExpired, ProcessPool

from api.errors import ApiError
from domain import model_calls
from trainyard.settings import Settings, get_settings

RETRY_AFTER_SECONDS = 2
STREAM_BACKLOG = 256  # pieces a worker may run ahead of the client reading them
_POLL_SECONDS = 0.1
_END = object()


class ModelPool:
    """The worker processes and who is using them (in this API process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.capacity = settings.model_workers + settings.model_queue
        self.busy: Counter[str] = Counter()
        self._pool: ProcessPool | None = None
        self._manager: SyncManager | None = None
        self._manager_lock = threading.Lock()
        # Threads that wait on the streams' queues, one per call the pool can hold.
        self.readers = ThreadPoolExecutor(self.capacity + 1, thread_name_prefix="model-stream")

    def _processes(self) -> ProcessPool:
        if self._pool is None:  # started on first use: most API processes never need it
            self._pool = ProcessPool(
                max_workers=self.settings.model_workers,
                initializer=model_calls.limit_memory,
                initargs=(self.settings.model_worker_memory_bytes, self.settings.generate_device),
                # A fresh interpreter: forking the API would copy its loop, threads and pools.
                context=multiprocessing.get_context("spawn"),
            )
        return self._pool

    def _queue(self) -> Any:
        """A new queue of the manager process, started on first use (blocking)."""
        with self._manager_lock:
            if self._manager is None:
                self._manager = multiprocessing.get_context("spawn").Manager()
            return self._manager.Queue(STREAM_BACKLOG)

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

    def _taken(self, project_id: str) -> None:
        self._admit(project_id)
        self.busy[project_id] += 1

    def _released(self, project_id: str) -> None:
        self.busy[project_id] -= 1
        if self.busy[project_id] <= 0:
            del self.busy[project_id]

    def _failure(self, exc: BaseException) -> BaseException:
        """The API's error for a call the pool stopped (time or memory), else exc itself."""
        if isinstance(exc, FutureTimeout):
            seconds = self.settings.model_call_seconds
            return ApiError(
                504,
                "model_call_timeout",
                f"the model call took longer than its limit of {seconds:g} s",
                {"limit_seconds": seconds},
            )
        if isinstance(exc, MemoryError | ProcessExpired):
            gib = self.settings.model_worker_memory_bytes / 1024**3
            return ApiError(
                422,
                "model_too_large",
                f"the model call ran out of its memory limit ({gib:g} GiB)",
                {"limit_bytes": self.settings.model_worker_memory_bytes},
            )
        return exc

    async def run(self, project_id: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` in a worker under the limits; its result."""
        self._taken(project_id)
        try:
            future = self._processes().schedule(
                fn, args=args, timeout=self.settings.model_call_seconds
            )
            return await asyncio.wrap_future(future)
        except (FutureTimeout, MemoryError, ProcessExpired) as exc:
            raise self._failure(exc) from exc
        finally:
            self._released(project_id)

    async def stream(self, project_id: str, fn: Callable[..., Any], *args: Any) -> Streamed:
        """Start `fn(*args, queue)` in a worker under the limits (a 429 now if the pool is
        full); iterate the result for what it puts in the queue. Close it when done."""
        self._taken(project_id)
        try:
            sink = await asyncio.get_running_loop().run_in_executor(self.readers, self._queue)
            future = self._processes().schedule(
                fn, args=(*args, sink), timeout=self.settings.model_call_seconds
            )
        except BaseException:
            self._released(project_id)
            raise
        return Streamed(self, project_id, future, sink)

    def close(self) -> None:
        """Stop the worker processes (at shutdown)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool.join()
            self._pool = None
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None
        self.readers.shutdown(wait=False, cancel_futures=True)


class Streamed:
    """A streamed call in a worker: an async iterator of what it puts in its queue; at the
    end, `result` holds what the call returned (its failure is raised instead)."""

    def __init__(self, pool: ModelPool, project_id: str, future: Future[Any], sink: Any) -> None:
        self._pool, self._project_id = pool, project_id
        self._future, self._sink = future, sink
        self._open = True
        self.result: Any = None

    def _next(self) -> Any:
        """The next piece, or _END once the call has returned and every piece is read
        (blocking: run in a thread)."""
        while True:
            try:
                return self._sink.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._future.done():  # all it put is in the queue by the time it returns
                    try:
                        return self._sink.get_nowait()
                    except queue.Empty:
                        return _END

    def __aiter__(self) -> Streamed:
        return self

    async def __anext__(self) -> Any:
        if not self._open:
            raise StopAsyncIteration
        item = await asyncio.get_running_loop().run_in_executor(self._pool.readers, self._next)
        if item is not _END:
            return item
        try:
            self.result = await asyncio.wrap_future(self._future)
        except (FutureTimeout, MemoryError, ProcessExpired) as exc:
            raise self._pool._failure(exc) from exc
        finally:
            self.close()
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop the call if it still runs (pebble ends its worker) and free its place."""
        if self._open:
            self._open = False
            self._future.cancel()
            self._pool._released(self._project_id)


_pool: ModelPool | None = None


def get_pool() -> ModelPool:
    """This API process's model pool."""
    global _pool
    if _pool is None:
        _pool = ModelPool(get_settings())
    return _pool
