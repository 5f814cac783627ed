"""Which server and key the client commands use, and the HTTP calls, with errors as one line each."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

EMBEDDED_URL = "http://127.0.0.1:8000/v1"


class CommandError(Exception):
    """A failure to report as one line (the API's message, or why the server could not be reached); `status` is
    the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def resolve_target(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """`--base-url`/`--api-key`, else LORAQ_BASE_URL/LORAQ_API_KEY, else OPENAI_BASE_URL/OPENAI_API_KEY, else
    the embedded mode's address and the key `loraq up` saved in its data folder."""
    url = base_url or os.environ.get("LORAQ_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or EMBEDDED_URL
    key = api_key or os.environ.get("LORAQ_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if not key:
        key_file = Path(os.environ.get("LORAQ_DATA_DIR", "loraq-data")) / "api_key"
        if key_file.is_file():
            key = key_file.read_text().strip()
    if not key:
        raise CommandError(
            "no API key: pass --api-key, set LORAQ_API_KEY, or run this where `loraq up` keeps loraq-data/api_key"
        )
    return url.rstrip("/"), key


def error_message(response: httpx.Response) -> str:
    """The API's `error.message` (with the HTTP status), or the start of whatever else came back."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip()[:300] or response.reason_phrase
    return f"{message} (HTTP {response.status_code})"


class Connection:
    """An httpx client for one server and key; every failure becomes a CommandError."""

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0):
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self.http = httpx.Client(
            base_url=base_url + "/", headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        return cls(*resolve_target(args.base_url, args.api_key))

    def clone(self) -> Connection:
        """Another connection to the same server (an httpx client is not shared between threads)."""
        return Connection(self.base_url, self.api_key, self.timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.transport_errors():
            response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise CommandError(error_message(response), response.status_code)
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def pages(self, path: str, limit: int = 100, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following `after` cursors."""
        after = None
        while True:
            page = self.get(path, limit=limit, **params, **({"after": after} if after else {}))
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["data"][-1]["id"]

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives; an error status is raised with the API's message."""
        with self.transport_errors(), self.http.stream(method, path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise CommandError(error_message(response), response.status_code)
            yield response

    @contextmanager
    def transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc) or type(exc).__name__
            raise CommandError(
                f"cannot reach the loraq server at {self.base_url}: {reason} (is it running? see --base-url)"
            ) from None
        except httpx.TransportError as exc:
            raise CommandError(f"the connection to {self.base_url} failed: {exc or type(exc).__name__}") from None
