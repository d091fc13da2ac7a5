"""Cursor paging over time-ordered ids: `?limit=&after=` answering `{data, has_more}`."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


def page(
    session: Session,
    query: Select[Any],
    id_column: InstrumentedAttribute[Any],
    *,
    limit: int,
    after: str | int | None,
    newest_first: bool = True,
) -> tuple[list[Any], bool]:
    """One page of rows after the cursor, and whether more follow."""
    query = _paged(query, id_column, limit=limit, after=after, newest_first=newest_first)
    rows = list(session.execute(query).scalars())
    return rows[:limit], len(rows) > limit


async def page_async(
    session: AsyncSession,
    query: Select[Any],
    id_column: InstrumentedAttribute[Any],
    *,
    limit: int,
    after: str | int | None,
    newest_first: bool = True,
) -> tuple[list[Any], bool]:
    """page() on an asyncio session: one query."""
    query = _paged(query, id_column, limit=limit, after=after, newest_first=newest_first)
    rows = list((await session.execute(query)).scalars())
    return rows[:limit], len(rows) > limit


def _paged(
    query: Select[Any],
    id_column: ColumnElement[Any] | InstrumentedAttribute[Any],
    *,
    limit: int,
    after: str | int | None,
    newest_first: bool,
) -> Select[Any]:
    if after is not None:
        query = query.where(id_column < after if newest_first else id_column > after)
    query = query.order_by(id_column.desc() if newest_first else id_column.asc())
    return query.limit(limit + 1)
