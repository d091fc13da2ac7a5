"""Project scoping: an object of another project is indistinguishable from a missing one."""

from __future__ import annotations

from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from domain.errors import NotFound


class Owned(Protocol):
    project_id: str


T = TypeVar("T", bound=Owned)


def impossible_id(object_id: str, kind: str) -> None:
    """A 404 for an id no row can have (too long, or a NUL), before asking the database."""
    if len(object_id) > 64 or "\x00" in object_id:  # no such id exists; spare the database
        raise NotFound(kind, object_id[:64])


def owned(session: Session, cls: type[T], object_id: str, project_id: str, kind: str) -> T:
    """The object if it exists and belongs to the project, else the same 404 either way."""
    impossible_id(object_id, kind)
    obj = session.get(cls, object_id)
    if obj is None or obj.project_id != project_id:
        raise NotFound(kind, object_id)
    return obj


async def owned_async(
    session: AsyncSession, cls: type[T], object_id: str, project_id: str, kind: str
) -> T:
    """owned() on an asyncio session: one query."""
    impossible_id(object_id, kind)
    obj = await session.get(cls, object_id)
    if obj is None or obj.project_id != project_id:
        raise NotFound(kind, object_id)
    return obj
