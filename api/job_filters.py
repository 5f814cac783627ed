"""The job list's filters: `status=` and `metadata[key]=value`, read from the query string.

`metadata[key]=value` is what the openai SDK's `fine_tuning.jobs.list(metadata={...})` sends (its query
strings nest objects with brackets); several pairs must all match, an empty value matches the empty string,
and `metadata=null` (the literal query string) selects jobs created without metadata. `status` takes one
status, or several separated by commas (or repeated). Each becomes a WHERE clause on `jobs` that means the
same on SQLite and PostgreSQL: metadata is a JSON column, read with `->>` on PostgreSQL and with
`json_each` on SQLite (whose JSON path syntax cannot name a key that holds a double quote).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Text, cast, exists, func, literal, or_, select
from starlette.datastructures import QueryParams

from api.errors import APIError
from models import Job, JobStatus

METADATA_PAIR = re.compile(r"^metadata\[(.*)\]$", re.DOTALL)
MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512  # as for the metadata a job is created with (api/schemas.py)


@dataclass(frozen=True)
class JobFilters:
    statuses: tuple[JobStatus, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    metadata_null: bool = False

    def __bool__(self) -> bool:
        return bool(self.statuses or self.metadata or self.metadata_null)

    def clauses(self, dialect: str) -> list[ColumnElement[bool]]:
        """WHERE clauses for `dialect` ("sqlite" or "postgresql")."""
        clauses: list[ColumnElement[bool]] = [Job.status.in_(self.statuses)] if self.statuses else []
        clauses += [_metadata_equals(key, value, dialect) for key, value in self.metadata]
        if self.metadata_null:
            clauses.append(or_(Job.user_metadata.is_(None), cast(Job.user_metadata, Text) == "null"))
        return clauses


def _metadata_equals(key: str, value: str, dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return Job.user_metadata[key].as_string() == value  # user_metadata ->> key, the key a bound parameter
    pairs = func.json_each(Job.user_metadata).table_valued("key", "value")
    return exists(select(literal(1)).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"Invalid '{param}': {message}", param=param, code="invalid_request")


def parse_job_filters(query: QueryParams) -> JobFilters:
    """The filters in a list request's query string; a 400 naming the parameter for a bad one."""
    statuses: list[JobStatus] = []
    for given in query.getlist("status"):
        for name in given.split(","):
            if name.strip() not in JobStatus.__members__:
                raise _bad(
                    "status", f"{name.strip()!r} is not a job status; use one of {', '.join(JobStatus)} (several "
                    "separated by commas)",
                )  # fmt: skip
            statuses.append(JobStatus(name.strip()))
    pairs = []
    for param in dict.fromkeys(query.keys()):  # each name once, in order
        match = METADATA_PAIR.match(param)
        if match:
            pairs.append((param, match.group(1), query.getlist(param)))
    null = query.getlist("metadata")
    if null and null != ["null"]:
        raise _bad("metadata", "filter with metadata[key]=value, or metadata=null for jobs without metadata")
    if null and pairs:
        raise _bad("metadata", "give metadata=null or metadata[key]=value filters, not both")
    if len(pairs) > MAX_PAIRS:
        raise _bad("metadata", f"at most {MAX_PAIRS} metadata[key]=value filters")
    for param, key, values in pairs:
        if not key or len(key) > MAX_KEY:
            raise _bad(param, f"a metadata key is 1 to {MAX_KEY} characters")
        if len(values) > 1:
            raise _bad(param, "given more than once")
        if len(values[0]) > MAX_VALUE or "\x00" in key + values[0]:
            raise _bad(param, f"a metadata value is at most {MAX_VALUE} characters, with no NUL")
    return JobFilters(tuple(dict.fromkeys(statuses)), tuple((key, values[0]) for _, key, values in pairs), bool(null))
