"""`/v1/files`, OpenAI-compatible: a file is a trainyard dataset (the same row and id),
validated at upload so it answers `processed` or `error` with the bad lines' numbers.

A succeeded fine-tuning job's CSV of step metrics is a file of purpose `fine-tune-results`
(domain.result_files): listed, shown, read and deleted like the others, never uploaded."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import CursorQuery, ProjectDep, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError
from api.openai_schemas import FileDeleted, FileOut, ListOut
from api.openai_views import file_out
from api.uploads import receive
from domain import datasets, result_files
from domain.errors import NotFound
from domain.orm import Dataset
from domain.paging import page

router = APIRouter(prefix="/v1/files", tags=["openai"])
PURPOSE = "fine-tune"
RESULTS = "fine-tune-results"


def _live(session: SessionDep, project_id: str, file_id: str) -> Dataset:
    dataset = datasets.get(session=session, project_id=project_id, dataset_id=file_id)
    if dataset.status == "deleted":
        raise NotFound("file", file_id)
    return dataset


@router.post("", response_model=FileOut)
async def create_file(
    request: Request,
    project_id: ProjectDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> FileOut:
    """Upload a JSONL file (multipart `file`, `purpose=fine-tune`), validated before the
    answer."""
    upload = await receive(request, storage.uploads_tmp(), settings.max_upload_bytes)
    purpose = upload.fields.get("purpose")
    if purpose != PURPOSE:
        upload.path.unlink(missing_ok=True)
        raise ApiError(
            400,
            "invalid_purpose",
            f"purpose must be {PURPOSE!r} on this server, got {purpose!r}",
            {"field": "purpose"},
        )
    dataset = await run_in_threadpool(
        datasets.create,
        session=session,
        storage=storage,
        project_id=project_id,
        upload=upload,
        queue=None,
    )
    return file_out(dataset)


@router.get("", response_model=ListOut[FileOut])
def list_files(
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    after: CursorQuery = None,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListOut[FileOut]:
    """List the project's files (its datasets), newest first unless `order=asc`."""
    if purpose not in (None, PURPOSE, RESULTS):
        return ListOut[FileOut](data=[], has_more=False)
    query = select(Dataset).where(Dataset.project_id == project_id, Dataset.status != "deleted")
    if purpose == PURPOSE:
        query = query.where(Dataset.kind != result_files.KIND)
    elif purpose == RESULTS:
        query = query.where(Dataset.kind == result_files.KIND)
    rows, more = page(
        session, query, Dataset.id, limit=limit, after=after, newest_first=order == "desc"
    )
    data = [file_out(d) for d in rows]
    return ListOut[FileOut](
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, project_id: ProjectDep, session: SessionDep) -> FileOut:
    """Show a file and its validation status."""
    return file_out(_live(session, project_id, file_id))


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(
    file_id: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> FileDeleted:
    """Delete a file that no active job uses."""
    _live(session, project_id, file_id)
    datasets.delete(session=session, storage=storage, project_id=project_id, dataset_id=file_id)
    return FileDeleted(id=file_id, deleted=True)


@router.get("/{file_id}/content")
def file_content(
    file_id: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> FileResponse:
    """The file's bytes as uploaded (a result file's CSV, written on first read if the job's
    end did not write it)."""
    dataset = _live(session, project_id, file_id)
    if dataset.kind == result_files.KIND:
        path = result_files.write(session=session, storage=storage, dataset=dataset)
        return FileResponse(path, media_type="text/csv", filename=dataset.filename)
    return FileResponse(storage.dataset_source(dataset.id), media_type="application/octet-stream")
