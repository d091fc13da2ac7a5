"""`/v1/datasets`: upload, list, show, delete, clean, and read the text."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import AsyncSessionDep, CursorQuery, ProjectDep, SessionDep, SettingsDep, StorageDep
from api.schemas import DatasetOut, Page
from api.uploads import receive
from domain import cleaning, datasets
from domain.access import owned_async
from domain.errors import NotFound
from domain.orm import Dataset
from domain.paging import page_async
from trainyard.cleaning.spec import CleaningSpec

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, response_model=DatasetOut)
async def upload_dataset(
    request: Request,
    project_id: ProjectDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> Dataset:
    """Upload a dataset (multipart `file`, optional `name`), streamed to storage."""
    upload = await receive(request, storage.uploads_tmp(), settings.max_upload_bytes)
    return datasets.create(
        session=session,
        storage=storage,
        project_id=project_id,
        upload=upload,
        queue=settings.queue("prep"),
    )


@router.get("", response_model=Page[DatasetOut])
async def list_datasets(
    project_id: ProjectDep,
    session: AsyncSessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> dict[str, object]:
    """List the project's datasets, newest first."""
    query = select(Dataset).where(Dataset.project_id == project_id, Dataset.status != "deleted")
    rows, more = await page_async(session, query, Dataset.id, limit=limit, after=after)
    return {"data": rows, "has_more": more}


@router.get("/{dataset_id}", response_model=DatasetOut)
async def get_dataset(dataset_id: str, project_id: ProjectDep, session: AsyncSessionDep) -> Dataset:
    """Show a dataset with its validation results."""
    dataset = await owned_async(session, Dataset, dataset_id, project_id, "dataset")
    if dataset.status == "deleted":
        raise NotFound("dataset", dataset_id)
    return dataset


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> Response:
    """Delete a dataset that no active job uses."""
    datasets.delete(session=session, storage=storage, project_id=project_id, dataset_id=dataset_id)
    return Response(status_code=204)


@router.post("/{dataset_id}/clean", status_code=201, response_model=DatasetOut)
def clean_dataset(
    dataset_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    settings: SettingsDep,
    spec: Annotated[CleaningSpec | None, Body()] = None,
) -> Dataset:
    """Start cleaning a dataset into a new one (`{}` or no body: every step, defaults)."""
    return cleaning.create(
        session=session,
        project_id=project_id,
        source_id=dataset_id,
        spec=spec or CleaningSpec(),
        queue=settings.queue("prep"),
    )


@router.get("/{dataset_id}/content", response_class=FileResponse)
def dataset_content(
    dataset_id: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> FileResponse:
    """Stream a dataset's text as stored (a cleaned dataset's once it is ready)."""
    dataset = datasets.get(session=session, project_id=project_id, dataset_id=dataset_id)
    path = datasets.content(
        session=session, storage=storage, project_id=project_id, dataset_id=dataset_id
    )
    media = "application/jsonl" if dataset.format == "jsonl" else "text/plain; charset=utf-8"
    return FileResponse(path, media_type=media)
