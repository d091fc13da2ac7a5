"""The calibration app: the least a status endpoint on this stack can do. FastAPI on
uvicorn (uvloop, httptools), async SQLAlchemy on asyncpg, one indexed select of the job by
id and project, the bearer key checked against a dict in memory. It reads trainyard's own
tables, so both apps answer from the same rows.

Run: TRAINYARD_DATABASE_URL=... CALIBRATION_KEY_HASH=... CALIBRATION_PROJECT=...
     uvicorn bench.calibration_app:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from domain.db import async_url
from trainyard.ids import hash_secret

engine = create_async_engine(
    async_url(os.environ["TRAINYARD_DATABASE_URL"]), pool_size=10, max_overflow=20
)
KEYS = {os.environ["CALIBRATION_KEY_HASH"]: os.environ["CALIBRATION_PROJECT"]}
app = FastAPI()


@app.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, authorization: Annotated[str, Header()]) -> dict[str, Any]:
    """The job's row, as JSON."""
    project = KEYS.get(hash_secret(authorization.removeprefix("Bearer ")))
    if project is None:
        raise HTTPException(401)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM jobs WHERE id = :id AND project_id = :p"),
                {"id": job_id, "p": project},
            )
        ).first()
    if row is None:
        raise HTTPException(404)
    return dict(row._mapping)
