"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.routers import (
    datasets,
    health,
    internal,
    jobs,
    models,
    openai_chat,
    openai_files,
    openai_jobs,
    tokenizers,
    webhooks,
)
from trainyard.settings import get_settings


def create_app() -> FastAPI:
    """Build the API. The schema must already exist: run `trainyard db upgrade` first."""
    app = FastAPI(
        title="trainyard",
        version="1.0.0",
        description="Training-as-a-service for language models.",
    )
    errors.install(app)
    for module in (
        health,
        datasets,
        tokenizers,
        jobs,
        models,
        openai_files,
        openai_jobs,
        openai_chat,
        webhooks,
        internal,
    ):
        app.include_router(module.router)
    get_settings().resolved_storage_root.mkdir(parents=True, exist_ok=True)
    return app
