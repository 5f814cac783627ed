"""The reads clients poll: one job by id, and the job list.

Clients poll job status in tight loops, so these two reads skip the ORM unit of work and FastAPI's
response re-validation. On PostgreSQL they run on the event loop through an async psycopg pool in
autocommit mode (one round trip, no worker thread), and a job's serialised form is kept in memory until
the database says the row changed: a trigger on `jobs` (migration 0003) sends a NOTIFY on every insert
or update, delivered at commit, and each API process LISTENs and evicts. While the listening connection
is down nothing is cached. On SQLite (the embedded mode, one machine) the same Core query runs in a
worker thread on the one engine, uncached. The SQL is compiled once from the SQLAlchemy table, so the
schema still has a single definition. A filtered list (`status`, `metadata[key]`: api/job_filters.py) is
built per request for its dialect and runs in a worker thread on either database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import bindparam, make_url, select
from sqlalchemy.dialects import postgresql

from api.deps import visible_to
from api.errors import not_found
from api.job_filters import JobFilters
from api.pagination import page_after, unknown_cursor
from api.schemas import JobPublic, JobsPublic
from models import Job, JobStatus
from models.api_keys import Principal
from models.session import get_engine

logger = logging.getLogger("loraq.api")

_JOBS = Job.__table__
NOTIFY_CHANNEL = "loraq_jobs"  # the trigger of migration 0003 notifies here with the job id
EVENTS_CHANNEL = "loraq_job_events"  # migration 0010's trigger: the job id, when an event of it is written


class JobCache:
    """Serialised jobs by id, valid while the change listener runs.

    A read records the generation before it queries; its result is stored only if no notification
    arrived meanwhile, so a row read just before a change can never outlive that change's eviction.
    """

    def __init__(self, max_entries: int = 10_000):
        self.max_entries = max_entries
        self.entries: dict[str, tuple[str, bytes]] = {}
        self.generation = 0
        self.active = False

    def get(self, job_id: str) -> tuple[str, bytes] | None:
        return self.entries.get(job_id) if self.active else None

    def put(self, job_id: str, owner: str, body: bytes, generation: int) -> None:
        if self.active and generation == self.generation:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[job_id] = (owner, body)

    def evict(self, job_id: str) -> None:
        self.generation += 1
        self.entries.pop(job_id, None)

    def reset(self, active: bool) -> None:
        self.generation += 1
        self.entries.clear()
        self.active = active


def _compile(statement) -> str:
    return str(statement.compile(dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}))


def _owned(statement, admin: bool):
    return statement if admin else statement.where(Job.owner == bindparam("owner"))


class JobReader:
    def __init__(self, database_url: str, pool_size: int, on_job_event: Callable[[str], None] | None = None):
        self.database_url = database_url
        self.on_job_event = on_job_event  # told the job id when one of its events is written (PostgreSQL)
        self.pool = None
        self.cache = JobCache()
        self._listener: asyncio.Task | None = None
        url = make_url(database_url)
        if url.get_backend_name() == "postgresql":
            from psycopg.rows import dict_row
            from psycopg_pool import AsyncConnectionPool

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.conninfo = conninfo
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
            self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self.pool is not None:
            await self.pool.close()

    async def _listen(self) -> None:
        """Evict jobs as the database reports changes, and pass on which jobs have new events; reconnect
        (caching nothing meanwhile) on errors."""
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    if self.on_job_event is not None:
                        await connection.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.cache.reset(active=True)
                    async for notification in connection.notifies():
                        if notification.channel == NOTIFY_CHANNEL:
                            self.cache.evict(notification.payload)
                        elif self.on_job_event is not None:
                            self.on_job_event(notification.payload)
            except asyncio.CancelledError:
                self.cache.reset(active=False)
                raise
            except Exception:
                logger.warning("job change listener lost its connection; caching paused", exc_info=True)
            self.cache.reset(active=False)
            await asyncio.sleep(1.0)

    # ---------------------------------------------------------------- public reads
    async def job(self, principal: Principal, job_id: str) -> bytes:
        if self.pool is None:
            return await run_in_threadpool(self._job_sync, principal, job_id)
        cached = self.cache.get(job_id)
        if cached is not None:
            owner, body = cached
            if principal.is_admin or owner == principal.owner:
                return body
            raise not_found("fine-tuning job", job_id)
        generation = self.cache.generation
        rows = await self._fetch(principal, "by_id", job_id=job_id)
        if not rows:
            raise not_found("fine-tuning job", job_id)
        owner = rows[0]["owner"]
        body = JobPublic.of(_as_job(rows[0])).model_dump_json().encode()
        self.cache.put(job_id, owner, body, generation)
        return body

    async def jobs(self, principal: Principal, after: str | None, limit: int, filters: JobFilters) -> bytes:
        if self.pool is None or filters:
            return await run_in_threadpool(self._jobs_sync, principal, after, limit, filters)
        if after is None:
            rows = await self._fetch(principal, "first_page", limit=limit + 1)
        else:
            cursor = await self._fetch(principal, "cursor", after=after)
            if not cursor:
                raise unknown_cursor(after)
            rows = await self._fetch(principal, "next_page", cursor=cursor[0]["seq"], limit=limit + 1)
        data = [JobPublic.of(_as_job(row)) for row in rows[:limit]]
        return JobsPublic(data=data, has_more=len(rows) > limit).model_dump_json().encode()

    async def _fetch(self, principal: Principal, name: str, **params: Any) -> list[dict[str, Any]]:
        assert self.pool is not None, "PostgreSQL only"
        if not principal.is_admin:
            params["owner"] = principal.owner
        async with self.pool.connection() as connection:
            cursor = await connection.execute(self.sql[(principal.is_admin, name)], params)
            return cast(list[dict[str, Any]], await cursor.fetchall())  # the pool's row factory is dict_row

    # ---------------------------------------------------------------- SQLite: Core in a worker thread
    def _job_sync(self, principal: Principal, job_id: str) -> bytes:
        with get_engine(self.database_url).connect() as connection:
            row = connection.execute(select(_JOBS).where(Job.id == job_id, visible_to(principal, Job))).first()
        if row is None:
            raise not_found("fine-tuning job", job_id)
        return JobPublic.of(cast(Job, row)).model_dump_json().encode()  # a Row reads like a Job

    def _jobs_sync(self, principal: Principal, after: str | None, limit: int, filters: JobFilters) -> bytes:
        with get_engine(self.database_url).connect() as connection:
            visible = visible_to(principal, Job)
            query = select(_JOBS).where(visible, *filters.clauses(connection.dialect.name))
            rows, has_more = page_after(connection, query, Job, after, limit, cursor_where=visible)
        return JobsPublic(data=[JobPublic.of(cast(Job, j)) for j in rows], has_more=has_more).model_dump_json().encode()


def _as_job(row: dict[str, Any]) -> Job:
    """A raw row with the column types the ORM would give (the status enum), read by JobPublic.of like a Job
    (attribute access only; building a mapped instance per poll would cost more than the query)."""
    row["status"] = JobStatus(row["status"])
    return cast(Job, SimpleNamespace(**row))
