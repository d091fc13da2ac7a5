"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import func, select, text

from api.deps import AdminDep, SessionDep, SettingsDep, StorageDep
from domain.db import get_async_engine
from domain.orm import Job

router = APIRouter(tags=["health"])
JOBS = Gauge("trainyard_jobs", "Jobs by status", ["status"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (answered on the event loop: no worker thread, no database)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(session: SessionDep, settings: SettingsDep, storage: StorageDep) -> JSONResponse:
    """The database, the broker and the storage are reachable."""
    from trainyard.messaging import get_app

    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        with get_app().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    root = storage.root
    checks["storage"] = "ok" if root.is_dir() else f"error: {root} is not a folder"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", dependencies=[AdminDep])
async def metrics() -> Response:
    """Prometheus exposition: jobs by status, across the platform (an admin key: a
    scrape config sends it as `authorization: {credentials: ...}`)."""
    async with get_async_engine().connect() as conn:
        query = select(Job.status, func.count()).group_by(Job.status)
        rows = (await conn.execute(query)).all()
    for status, count in rows:
        JOBS.labels(status=status).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
