"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraq.storage import StorageError

logger = logging.getLogger("loraq.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """An error the caller can act on; `param` names the field, `code` is machine-readable."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers, self.extra = headers, extra or {}


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind}: '{object_id}'", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None, **extra) -> dict:
    error_type = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code, **extra}}


def _location(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names union branches (e.g. "int", "literal['auto']") in the location; they are not fields
    parts = [p for p in parts if not p.startswith(("literal[", "function-")) and p not in ("int", "str", "float")]
    return ".".join(parts) or None


def error_response(exc: APIError) -> JSONResponse:
    """The answer for `exc`. A route returns it, instead of raising, when its transaction must commit anyway
    (raising rolls back): e.g. to keep the log of an attempt that failed."""
    body = error_body(exc.status, exc.message, exc.param, exc.code, **exc.extra)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        param = _location(tuple(first.get("loc", ())))
        message = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            message = f"Unknown field '{param}'"
        elif param:
            message = f"Invalid '{param}': {message}"
        return JSONResponse(error_body(400, message, param, "invalid_request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, exc: StorageError):
        # The object store is down or refuses us: the operator's to fix, and worth a retry (503, not 500).
        logger.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        body = error_body(503, f"Storage is unavailable: {exc}", code="storage_unavailable")
        return JSONResponse(body, status_code=503, headers={"retry-after": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Logged with the path for us; the caller gets no stack trace.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "The server had an error processing your request."), status_code=500)
