"""Cursor pagination in OpenAI's style: `after` is the id of the last item of the previous page."""

from __future__ import annotations

from sqlalchemy import Connection, Select, select
from sqlalchemy.orm import Session

from api.errors import APIError


def page_after(
    db: Session | Connection, query: Select, model, after: str | None, limit: int, descending=True, cursor_where=None
):
    """Rows of `query` following the row with id `after`, ordered by insertion; returns (rows, has_more).

    With a Session, an ORM query gives model objects; with a Connection, a Core query gives rows. The cursor
    must be a row `cursor_where` allows (the caller's own), when given.
    """
    if after is not None:
        where = [model.id == after] + ([cursor_where] if cursor_where is not None else [])
        cursor = db.execute(select(model.seq).where(*where)).scalar()
        if cursor is None:
            raise unknown_cursor(after)
        query = query.where(model.seq < cursor if descending else model.seq > cursor)
    query = query.order_by(model.seq.desc() if descending else model.seq.asc()).limit(limit + 1)
    result = db.execute(query)
    rows = list(result.scalars() if isinstance(db, Session) else result)
    return rows[:limit], len(rows) > limit


def page(list_class, data: list, has_more: bool):
    """The OpenAI-style list object `list_class` of one page: its items, whether more follow, and the first and
    last ids (the next page's `after`)."""
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return list_class(data=data, has_more=has_more, first_id=first, last_id=last)


def unknown_cursor(after: str) -> APIError:
    return APIError(400, f"Unknown cursor '{after}'.", param="after", code="invalid_cursor")
