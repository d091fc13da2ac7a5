"""`/v1/nodes` and `/v1/quotas`: the cluster as an admin key sees it, and project quotas."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep, SessionDep
from api.schemas import NodeAttemptOut, NodeInfo, Page, QuotaIn, QuotaOut
from domain import nodes, quotas

router = APIRouter(prefix="/v1", tags=["cluster"], dependencies=[AdminDep])


@router.get("/nodes", response_model=Page[NodeInfo])
def list_nodes(session: SessionDep) -> dict[str, object]:
    """Every registered node: address, slots, free slots, devices, memory, last heartbeat
    and running attempts (admin keys only)."""
    data = [
        NodeInfo(
            id=v.node.id,
            name=v.node.name,
            status=v.node.status,
            host=v.node.host,
            address=v.node.address,
            pool=v.node.pool,
            accelerator=v.node.accelerator,
            slots=v.node.slots,
            free_slots=v.free_slots,
            devices=list(v.node.devices),
            memory_bytes=v.node.memory_bytes,
            last_heartbeat_at=v.node.heartbeat_at,
            attempts=[NodeAttemptOut(**vars(a)) for a in v.attempts],
        )
        for v in nodes.overview(session=session)
    ]
    return {"data": data, "has_more": False}


def _quota_out(usage: quotas.Usage) -> QuotaOut:
    q = usage.quota
    return QuotaOut(
        project=usage.project_name,
        max_running_slots=q.max_running_slots,
        max_queued_jobs=q.max_queued_jobs,
        max_storage_bytes=q.max_storage_bytes,
        best_priority=q.best_priority,
        running_slots=usage.running_slots,
        queued_jobs=usage.queued_jobs,
        storage_bytes=usage.storage_bytes,
    )


@router.get("/quotas/{project}", response_model=QuotaOut)
def get_quota(project: str, session: SessionDep) -> QuotaOut:
    """A project's quota and its use now (admin keys only)."""
    return _quota_out(quotas.usage(session=session, project_name=project))


@router.put("/quotas/{project}", response_model=QuotaOut)
def set_quota(project: str, quota_in: QuotaIn, session: SessionDep) -> QuotaOut:
    """Set a project's quota (admin keys only); fields left out mean no limit."""
    quotas.set_quota(session=session, project_name=project, **quota_in.model_dump())
    return _quota_out(quotas.usage(session=session, project_name=project))
