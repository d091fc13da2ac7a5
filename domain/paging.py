"""Cursor paging over time-ordered ids: `?limit=&after=` answering `{data, has_more}`."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
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
    if after is not None:
        query = query.where(id_column < after if newest_first else id_column > after)
    query = query.order_by(id_column.desc() if newest_first else id_column.asc())
    rows = list(session.execute(query.limit(limit + 1)).scalars())
    return rows[:limit], len(rows) > limit
