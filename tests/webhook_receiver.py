"""A real HTTP server that receives webhooks in tests: it records every request (headers and raw body), and can
be told to answer with another status, to hold requests open until released, or to stop and start again on
the same port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.servers import free_port


class WebhookReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/loraq"
        self.requests: list[tuple[dict[str, str], str]] = []
        self.status = 200
        self.holding = False
        self.released = threading.Event()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- control
    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    hold, status = receiver.holding, receiver.status
                if hold:
                    receiver.released.wait(120)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed while we held its request)

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answer(self, status: int) -> None:
        with self.lock:
            self.status = status

    def hold(self) -> None:
        """Keep each request open, unanswered, until `release()`."""
        self.released.clear()
        self.holding = True

    def release(self) -> None:
        self.holding = False
        self.released.set()

    # ---------------------------------------------------------------- what arrived
    def received(self) -> list[tuple[dict[str, str], str]]:
        with self.lock:
            return list(self.requests)

    def by_webhook_id(self) -> dict[str, list[tuple[dict[str, str], str]]]:
        """Requests grouped by `webhook-id`: what a receiver deduplicating on it sees once each."""
        grouped: dict[str, list[tuple[dict[str, str], str]]] = {}
        for headers, body in self.received():
            grouped.setdefault(headers["webhook-id"], []).append((headers, body))
        return grouped

    def events(self) -> list[dict]:
        """The distinct events received, deduplicated by webhook-id, in arrival order."""
        return [json.loads(requests[0][1]) for requests in self.by_webhook_id().values()]

    def wait_until(self, condition, timeout: float = 120, what: str = "the webhooks") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not arrive within {timeout}s: {self.received()}")
            time.sleep(0.1)


@contextlib.contextmanager
def trickling_receiver(seconds_per_byte: float = 0.3) -> Iterator[str]:
    """A receiver that sends its 200 answer one byte every `seconds_per_byte` (about 12 s in all at 0.3 s), each
    read well within any timeout: only a deadline on the whole attempt cuts it off. Yields its URL."""
    server = socket.create_server(("127.0.0.1", 0))

    def trickle() -> None:
        with contextlib.suppress(OSError):
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    connection.send(bytes([byte]))
                    time.sleep(seconds_per_byte)

    threading.Thread(target=trickle, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        server.close()
