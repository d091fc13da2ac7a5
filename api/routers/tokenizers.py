"""`/v1/tokenizers`: upload a tokenizer.json, list, show, download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import CursorQuery, ProjectDep, SessionDep, StorageDep
from api.schemas import Page, TokenizerOut
from api.uploads import receive
from domain import tokenizers
from domain.errors import NotFound
from domain.orm import Tokenizer
from domain.paging import page

router = APIRouter(prefix="/v1/tokenizers", tags=["tokenizers"])


@router.post("", status_code=201, response_model=TokenizerOut)
async def upload_tokenizer(
    request: Request, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> Tokenizer:
    """Upload a Hugging Face `tokenizer.json` (multipart `file`) for any job to use."""
    upload = await receive(request, storage.uploads_tmp(), tokenizers.MAX_TOKENIZER_BYTES)
    return tokenizers.create(session=session, storage=storage, project_id=project_id, upload=upload)


@router.get("", response_model=Page[TokenizerOut])
def list_tokenizers(
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> dict[str, object]:
    """List the project's tokenizers (uploaded, and BPE trained on its datasets)."""
    query = select(Tokenizer).where(Tokenizer.project_id == project_id)
    rows, more = page(session, query, Tokenizer.id, limit=limit, after=after)
    return {"data": rows, "has_more": more}


@router.get("/{tokenizer_id}", response_model=TokenizerOut)
def get_tokenizer(tokenizer_id: str, project_id: ProjectDep, session: SessionDep) -> Tokenizer:
    """Show a tokenizer."""
    return tokenizers.get(session=session, project_id=project_id, tokenizer_id=tokenizer_id)


@router.get("/{tokenizer_id}/tokenizer.json")
def download_tokenizer(
    tokenizer_id: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> FileResponse:
    """Download the tokenizer.json."""
    row = tokenizers.get(session=session, project_id=project_id, tokenizer_id=tokenizer_id)
    path = storage.tokenizer_file(row.id)
    if row.status != "ready" or not path.exists():
        raise NotFound("tokenizer file", row.id)
    return FileResponse(path, filename="tokenizer.json", media_type="application/json")
