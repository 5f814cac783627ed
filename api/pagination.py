"""Cursor pagination in OpenAI's style: `after` is the id of the last item of the previous page."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from api.errors import APIError


def page_after(session: Session, query: Select, model, after: str | None, limit: int, descending: bool = True):
    """Rows of `query` following the row with id `after`, ordered by insertion; returns (rows, has_more)."""
    if after is not None:
        cursor = session.scalars(select(model.seq).where(model.id == after)).first()
        if cursor is None:
            raise APIError(400, f"Unknown cursor '{after}'.", param="after", code="invalid_cursor")
        query = query.where(model.seq < cursor if descending else model.seq > cursor)
    query = query.order_by(model.seq.desc() if descending else model.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit
