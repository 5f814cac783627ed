"""SQLAlchemy models of loraq's records and the session handling. The database is the source of truth."""

from models.base import Base, new_id, utcnow
from models.records import ApiKey, Checkpoint, FileRecord, FileStatus, IdempotencyRecord, Job, JobEvent, JobStatus

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "FileRecord",
    "FileStatus",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "JobStatus",
    "new_id",
    "utcnow",
]
