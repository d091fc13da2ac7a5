"""Per-project quotas, set by an admin: running slots (over it a job waits in the queue),
queued jobs and storage bytes (over them a submit or upload is refused, storing nothing),
and the best priority the project's jobs may ask for (a default is clamped to it)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.dispatch import slots_of
from domain.errors import NotFound, QuotaExceeded
from domain.lifecycle import WAITING, JobStatus
from domain.orm import Dataset, Job, Project, Quota
from trainyard.specs import DEFAULT_PRIORITY

# Jobs that count as queued: not yet running, not finished.
QUEUED = (*WAITING, JobStatus.PAUSED)


@dataclass(frozen=True)
class Usage:
    """What a project holds now, against its quota."""

    quota: Quota
    project_name: str
    running_slots: int
    queued_jobs: int
    storage_bytes: int


def _project(session: Session, name: str) -> Project:
    project = session.execute(select(Project).where(Project.name == name)).scalar()
    if project is None:
        raise NotFound("project", name)
    return project


def set_quota(
    *,
    session: Session,
    project_name: str,
    max_running_slots: int | None,
    max_queued_jobs: int | None,
    max_storage_bytes: int | None,
    best_priority: int | None = None,
) -> Quota:
    """Replace a project's quota (None: no limit)."""
    project = _project(session, project_name)
    quota = session.get(Quota, project.id) or Quota(project_id=project.id)
    quota.max_running_slots = max_running_slots
    quota.max_queued_jobs = max_queued_jobs
    quota.max_storage_bytes = max_storage_bytes
    quota.best_priority = best_priority
    session.add(quota)
    session.commit()
    return quota


def _queued_jobs(session: Session, project_id: str) -> int:
    return int(
        session.execute(
            select(func.count(Job.id)).where(Job.project_id == project_id, Job.status.in_(QUEUED))
        ).scalar()
        or 0
    )


def _storage_bytes(session: Session, project_id: str) -> int:
    return int(
        session.execute(
            select(func.coalesce(func.sum(Dataset.bytes), 0)).where(
                Dataset.project_id == project_id, Dataset.status != "deleted"
            )
        ).scalar()
        or 0
    )


def usage(*, session: Session, project_name: str) -> Usage:
    """A project's quota and what it uses of it."""
    project = _project(session, project_name)
    quota = session.get(Quota, project.id) or Quota(project_id=project.id)
    running = session.execute(
        select(Job).where(Job.project_id == project.id, Job.status == JobStatus.RUNNING)
    ).scalars()
    return Usage(
        quota=quota,
        project_name=project.name,
        running_slots=sum(slots_of(j) for j in running),
        queued_jobs=_queued_jobs(session, project.id),
        storage_bytes=_storage_bytes(session, project.id),
    )


def check_submit(*, session: Session, project_id: str) -> None:
    """Refuse a new job over the project's queued-jobs quota."""
    quota = session.get(Quota, project_id)
    if quota is None or quota.max_queued_jobs is None:
        return
    queued = _queued_jobs(session, project_id)
    if queued >= quota.max_queued_jobs:
        raise QuotaExceeded(
            "quota_exceeded",
            f"the project has {queued} queued jobs, its quota max_queued_jobs is "
            f"{quota.max_queued_jobs}",
            {"quota": "max_queued_jobs", "limit": quota.max_queued_jobs, "used": queued},
        )


def priority(*, session: Session, project_id: str, asked: int | None) -> int:
    """The priority a new job runs at: the one it asked for, or the default clamped to the
    project's `best_priority` (lower runs first). Asking for a better one than the cap is
    refused; a default never is."""
    quota = session.get(Quota, project_id)
    cap = None if quota is None else quota.best_priority
    if asked is None:
        return DEFAULT_PRIORITY if cap is None else max(DEFAULT_PRIORITY, cap)
    if cap is not None and asked < cap:
        raise QuotaExceeded(
            "quota_exceeded",
            f"resources.priority {asked} is better than the project's quota best_priority "
            f"of {cap} (lower runs first); ask for {cap} or more, or leave it out",
            {"quota": "best_priority", "limit": cap, "asked": asked, "field": "resources.priority"},
        )
    return asked


def check_storage(*, session: Session, project_id: str, adding: int) -> None:
    """Refuse an upload that would take the project over its storage quota."""
    quota = session.get(Quota, project_id)
    if quota is None or quota.max_storage_bytes is None:
        return
    used = _storage_bytes(session, project_id)
    if used + adding > quota.max_storage_bytes:
        raise QuotaExceeded(
            "quota_exceeded",
            f"the project stores {used} bytes; {adding} more would exceed its quota "
            f"max_storage_bytes of {quota.max_storage_bytes}",
            {
                "quota": "max_storage_bytes",
                "limit": quota.max_storage_bytes,
                "used": used,
                "adding": adding,
            },
        )
