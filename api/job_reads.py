"""The reads clients poll: one job by id, and the job list.

Clients poll job status in tight loops, so these two reads skip the ORM unit of work and FastAPI's
response re-validation. On PostgreSQL they run on the event loop through an async psycopg pool in
autocommit mode (one round trip, no worker thread); on SQLite (the embedded mode) they run the same
Core query in a worker thread. The SQL is compiled once from the SQLAlchemy table, so the schema still
has a single definition.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import bindparam, make_url, select
from sqlalchemy.dialects import postgresql

from api.auth import Principal
from api.deps import visible_to
from api.errors import not_found
from api.pagination import page_after
from api.schemas import JobPublic, JobsPublic
from models import Job, JobStatus
from models.session import read_connection

_JOBS = Job.__table__


def _compile(statement) -> str:
    return str(statement.compile(dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}))


def _owned(statement, admin: bool):
    return statement if admin else statement.where(Job.owner == bindparam("owner"))


class JobReader:
    def __init__(self, database_url: str, pool_size: int):
        self.database_url = database_url
        self.pool = None
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.pool = AsyncConnectionPool(
                conninfo, min_size=1, max_size=pool_size, open=False,
                kwargs={"autocommit": True, "row_factory": dict_row, "prepare_threshold": 0},
            )  # fmt: skip
            by_id = select(_JOBS).where(Job.id == bindparam("job_id"))
            page = select(_JOBS).order_by(Job.seq.desc()).limit(bindparam("limit"))
            self.sql = {
                (admin, name): _compile(_owned(statement, admin))
                for admin in (False, True)
                for name, statement in (
                    ("by_id", by_id),
                    ("first_page", page),
                    ("next_page", page.where(Job.seq < bindparam("cursor"))),
                    ("cursor", select(Job.seq).where(Job.id == bindparam("after"))),
                )
            }

    async def open(self) -> None:
        if self.pool is not None:
            await self.pool.open()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    # ---------------------------------------------------------------- public reads
    async def job(self, principal: Principal, job_id: str) -> bytes:
        if self.pool is None:
            return await run_in_threadpool(self._job_sync, principal, job_id)
        rows = await self._fetch(principal, "by_id", job_id=job_id)
        if not rows:
            raise not_found("fine-tuning job", job_id)
        return JobPublic.of(_as_job(rows[0])).model_dump_json().encode()

    async def jobs(self, principal: Principal, after: str | None, limit: int) -> bytes:
        if self.pool is None:
            return await run_in_threadpool(self._jobs_sync, principal, after, limit)
        if after is None:
            rows = await self._fetch(principal, "first_page", limit=limit + 1)
        else:
            cursor = await self._fetch(principal, "cursor", after=after)
            if not cursor:
                from api.errors import APIError

                raise APIError(400, f"Unknown cursor '{after}'.", param="after", code="invalid_cursor")
            rows = await self._fetch(principal, "next_page", cursor=cursor[0]["seq"], limit=limit + 1)
        data = [JobPublic.of(_as_job(row)) for row in rows[:limit]]
        return JobsPublic(data=data, has_more=len(rows) > limit).model_dump_json().encode()

    async def _fetch(self, principal: Principal, name: str, **params: Any) -> list[dict]:
        if not principal.is_admin:
            params["owner"] = principal.owner
        async with self.pool.connection() as connection:
            cursor = await connection.execute(self.sql[(principal.is_admin, name)], params)
            return await cursor.fetchall()

    # ---------------------------------------------------------------- SQLite: Core in a worker thread
    def _job_sync(self, principal: Principal, job_id: str) -> bytes:
        with read_connection(self.database_url) as connection:
            row = connection.execute(select(_JOBS).where(Job.id == job_id, visible_to(principal, Job))).first()
        if row is None:
            raise not_found("fine-tuning job", job_id)
        return JobPublic.of(row).model_dump_json().encode()

    def _jobs_sync(self, principal: Principal, after: str | None, limit: int) -> bytes:
        with read_connection(self.database_url) as connection:
            rows, has_more = page_after(connection, select(_JOBS).where(visible_to(principal, Job)), Job, after, limit)
        return JobsPublic(data=[JobPublic.of(j) for j in rows], has_more=has_more).model_dump_json().encode()


def _as_job(row: dict) -> SimpleNamespace:
    """A raw row with the column types the ORM would give (the status enum)."""
    row["status"] = JobStatus(row["status"])
    return SimpleNamespace(**row)
