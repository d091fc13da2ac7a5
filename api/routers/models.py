"""`/v1/models`: list, show, download files, generate.

The path is shared with OpenAI's API: a model object carries OpenAI's `created` and
`owned_by` beside the native fields, the list is also `{"object": "list"}`, without `limit`
it holds every model (OpenAI's clients do not page models), and `GET /v1/models/{id}` and
`POST /v1/models/{id}/generate` take a model's id or name (names may hold `/` and `:`, as
`ft:...` names do) or a fine-tuning checkpoint's id (`ft:...:ckpt-step-{step}`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy import select

from api.deps import AsyncSessionDep, CursorQuery, ProjectDep, SessionDep, SettingsDep, StorageDep
from api.model_pool import get_pool
from api.schemas import GenerateIn, GenerateOut, ModelList, ModelOut, Usage
from api.uploads import receive_files
from api.views import checkpoint_model_out, model_out
from domain import model_calls, models, serving
from domain.errors import Conflict, Invalid
from domain.orm import Model
from domain.paging import page_async
from trainyard.specs import check_name

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(
    project_id: ProjectDep,
    session: AsyncSessionDep,
    limit: Annotated[int | None, Query(ge=1, le=100)] = None,
    after: CursorQuery = None,
) -> dict[str, object]:
    """List the project's models, newest first: all of them, or a page with `limit`."""
    query = select(Model).where(Model.project_id == project_id)
    if limit is None:
        rows = list((await session.execute(query.order_by(Model.id.desc()))).scalars())
        return {"data": [model_out(m) for m in rows], "has_more": False}
    rows, more = await page_async(session, query, Model.id, limit=limit, after=after)
    return {"data": [model_out(m) for m in rows], "has_more": more}


@router.post("/import", status_code=201, response_model=ModelOut)
async def import_model(
    request: Request,
    project_id: ProjectDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> ModelOut:
    """Import a Hugging Face folder: multipart parts `config` (config.json), `weights`
    (model.safetensors) and `tokenizer` (tokenizer.json), optional field `name`."""
    uploads = await receive_files(
        request, storage.uploads_tmp(), settings.max_model_bytes, tuple(models.IMPORT_PARTS)
    )
    name = next(iter(uploads.values())).fields.get("name")
    try:
        name = check_name(name) if name is not None else None
    except ValueError as exc:
        for upload in uploads.values():
            upload.path.unlink(missing_ok=True)
        raise Invalid("invalid_name", f"name: {exc}") from exc
    staged = await run_in_threadpool(
        models.stage_import, storage=storage, uploads=uploads, max_bytes=settings.max_model_bytes
    )
    try:
        problem = await get_pool().run(project_id, model_calls.check_loadable, str(staged.folder))
    except BaseException:
        models.discard(staged)
        raise
    if problem is not None:
        models.discard(staged)
        raise Invalid("invalid_model", f"the files do not form a usable model: {problem}")
    model = await run_in_threadpool(
        models.commit_import,
        session=session,
        storage=storage,
        project_id=project_id,
        staged=staged,
        name=name,
    )
    return model_out(model)


@router.get("/{model_id}/files/{name}")
def download_file(
    model_id: str, name: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> FileResponse:
    """Download one of the model's files."""
    model = models.get(session=session, project_id=project_id, model_id=model_id)
    path = models.file_path(storage=storage, model=model, name=name)
    return FileResponse(path, filename=name, media_type="application/octet-stream")


@router.post("/{model_ref:path}/generate", response_model=GenerateOut)
async def generate(
    model_ref: str,
    body: GenerateIn,
    project_id: ProjectDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> GenerateOut:
    """Sample a continuation of a prompt (or a chat reply) from a model, by id or name, or
    from a fine-tuning checkpoint by its id."""
    served = await run_in_threadpool(
        serving.resolve, session=session, storage=storage, project_id=project_id, ref=model_ref
    )
    request = body.model_dump(exclude={"messages"})
    request["messages"] = [m.model_dump() for m in body.messages] if body.messages else None
    done = await get_pool().run(
        project_id, model_calls.generate, served.target, settings.generate_device, request
    )
    if done.get("error") == "not_a_chat_model":
        raise Invalid(
            "not_a_chat_model", f"model {model_ref} has no chat template; send a plain prompt"
        )
    if "error" in done:
        raise Conflict(
            str(done["error"]), f"model {model_ref} cannot be loaded: {done.get('message', '')}"
        )
    return GenerateOut(
        model_id=served.model.id if served.model else model_ref,
        prompt=body.prompt,
        messages=body.messages,
        text=done["text"],
        finish_reason=done["finish_reason"],
        usage=Usage(
            prompt_tokens=done["prompt_tokens"],
            completion_tokens=done["completion_tokens"],
            total_tokens=done["prompt_tokens"] + done["completion_tokens"],
        ),
    )


@router.get("/{model_ref:path}", response_model=ModelOut)
def get_model(
    model_ref: str, project_id: ProjectDep, session: SessionDep, storage: StorageDep
) -> ModelOut:
    """Show a model (by id or name) and its files, or a fine-tuning checkpoint by its id."""
    served = serving.resolve(session=session, storage=storage, project_id=project_id, ref=model_ref)
    if served.model is not None:
        return model_out(served.model)
    assert served.job is not None and served.checkpoint is not None
    base = session.get(Model, served.job.spec["model"].get("base_model_id"))
    return checkpoint_model_out(model_ref, served.job, served.checkpoint, base)
