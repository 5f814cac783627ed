"""Typed errors of the worker's tasks: each names the job error `code` (and `param`) a user sees."""

from __future__ import annotations


class JobTaskError(Exception):
    """A reason a task fails a job; `message` is what the user reads in the job's `error`."""

    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.param = param


class ModelNotOffered(JobTaskError):
    """The job's base model is no longer in the server's list."""

    code = "model_not_found"


class ValidationFailure(JobTaskError):
    """The validating_files stage found the job's files or settings unusable (code names which)."""

    code = "validation_error"


class StorageFailure(JobTaskError):
    """Shared storage could not be read or written."""

    code = "storage_error"
