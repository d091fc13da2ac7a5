"""The FastAPI application factories: the public API and the node workers' listener."""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI

from api import errors, limits, ui
from api.deps import key_cache
from api.guard import Guard
from api.model_pool import get_pool
from api.routers import (
    cluster,
    datasets,
    health,
    internal,
    jobs,
    keys,
    models,
    openai_chat,
    openai_files,
    openai_jobs,
    tokenizers,
    webhooks,
)
from api.wakeups import job_wakeups
from domain.db import get_async_engine
from domain.lease import serve_api_presence
from trainyard.settings import Settings, get_settings
from trainyard.storage import Storage


@contextmanager
def _api_presence() -> Iterator[None]:
    """Keep this process's API liveness lease while it serves the node workers' endpoints."""
    stop = threading.Event()
    thread = threading.Thread(
        target=serve_api_presence,
        args=(get_settings().node_timeout_seconds, stop),
        name="api-presence",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@asynccontextmanager
async def _internal_lifespan(_: FastAPI) -> AsyncIterator[None]:
    with _api_presence():
        yield


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    # What start-up built (modules, routes, schemas: most of the heap) lives as long as
    # the process: frozen, the collector never walks it again, and a full collection in
    # the middle of a status poll costs a fraction of what it did.
    gc.collect()
    gc.freeze()
    if get_settings().internal_port is None:
        with _api_presence():
            yield
    else:
        yield
    await key_cache.close()
    await job_wakeups.close()
    await limits.shared_store.close()
    if get_async_engine.cache_info().currsize:
        await get_async_engine().dispose()
    get_pool().close()


def create_app() -> FastAPI:
    """Build the API. The schema must already exist: run `trainyard db upgrade` first.

    With `internal_port` set, the node workers' endpoints are left to create_internal_app.
    """
    settings = get_settings()
    refuse_placeholder_secrets(settings)
    app = FastAPI(
        title="trainyard",
        version="1.0.0",
        description="Training-as-a-service for language models.",
        lifespan=_lifespan,
    )
    key_cache.configure(settings)
    job_wakeups.configure(settings)
    limits.configure(settings)
    errors.install(app)
    for module in (
        health,
        datasets,
        tokenizers,
        jobs,
        models,
        cluster,
        keys,
        openai_files,
        openai_jobs,
        openai_chat,
        webhooks,
    ):
        app.include_router(module.router)
    if settings.internal_port is None:
        app.include_router(internal.router)
    ui.install(app)
    app.add_middleware(Guard, settings=settings)
    settings.resolved_storage_root.mkdir(parents=True, exist_ok=True)
    Storage.from_settings(settings).sweep_tmp(settings.tmp_max_age_seconds)
    return app


def refuse_placeholder_secrets(settings: Settings) -> None:
    """Stop at start-up while a secret is still an example's placeholder."""
    found = settings.placeholder_secrets()
    if found:
        raise SystemExit(
            f"refusing to start: {', '.join(found)} still holds a placeholder secret "
            "(change-me); set a random one, e.g. `openssl rand -hex 24`"
        )


def create_internal_app() -> FastAPI:
    """The node workers' endpoints alone, served on their own port."""
    refuse_placeholder_secrets(get_settings())
    app = FastAPI(
        title="trainyard internal",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=_internal_lifespan,
    )
    errors.install(app)
    app.include_router(internal.router)
    return app
