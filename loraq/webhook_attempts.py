"""One webhook delivery attempt: check the URL (loraq.webhook_urls), connect to the address that was checked,
POST the body signed with the endpoint's active secrets (loraq.webhook_signing), and report the answer's status.

The worker's outbox sender and the API's `test` route both send through `attempt_delivery`, so a test event
passes the same SSRF guard and carries the same signatures as a real one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from loraq.webhook_signing import signed_headers
from loraq.webhook_urls import WebhookURLError, checked_address


@dataclass
class Attempt:
    status_code: int | None  # None: no HTTP answer (refused by the URL rules, connection error, timeout)
    error: str | None  # None: a 2xx
    url_refused: bool = False  # the URL rules refused the URL: nothing was sent

    @property
    def delivered(self) -> bool:
        return self.error is None


def attempt_client(timeout_seconds: float) -> httpx.Client:
    """A client for delivery attempts. No redirects (a 3xx is a failed attempt: following one could lead
    anywhere), no proxy from the environment (it would connect to the checked address through someone else)."""
    return httpx.Client(timeout=timeout_seconds, follow_redirects=False, trust_env=False)


def attempt_delivery(
    client: httpx.Client,
    url: str,
    signing_secrets: Sequence[str],
    message_id: str,
    body: str,
    allowed_hosts: frozenset[str],
) -> Attempt:
    try:
        address = checked_address(url, allowed_hosts)
    except WebhookURLError as exc:
        return Attempt(None, str(exc), url_refused=True)
    target = httpx.URL(url)
    headers = {**signed_headers(signing_secrets, message_id, body), "host": target.netloc.decode("ascii"),
               "user-agent": "loraq-webhooks"}  # fmt: skip
    # Connect to the checked address; TLS still verifies the certificate against the URL's host name.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with client.stream(
            "POST", target.copy_with(host=address), content=body.encode(), headers=headers, extensions=extensions
        ) as response:  # the answer's body is never read
            code = response.status_code
    except (httpx.HTTPError, OSError) as exc:
        return Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return Attempt(code, None if 200 <= code < 300 else f"HTTP {code}")


def attempt_delivery_within(
    seconds: float,
    timeout_seconds: float,
    url: str,
    signing_secrets: Sequence[str],
    message_id: str,
    body: str,
    allowed_hosts: frozenset[str],
) -> Attempt:
    """attempt_delivery with `timeout_seconds` for each network operation and `seconds` for the whole attempt:
    httpx's timeouts apply to each operation only, so a receiver that trickles its answer a byte at a time would
    hold the caller as long as it likes. A timer closes the attempt's own client at the deadline, which ends the
    request at once. (The URL check's DNS lookup before it has the resolver's own timeout.)"""
    expired = threading.Event()
    with attempt_client(timeout_seconds) as client:

        def expire() -> None:
            expired.set()
            client.close()

        watchdog = threading.Timer(seconds, expire)
        watchdog.start()
        try:
            attempt = attempt_delivery(client, url, signing_secrets, message_id, body, allowed_hosts)
        finally:
            watchdog.cancel()
    if expired.is_set() and not attempt.url_refused:
        return Attempt(None, f"no complete answer within {seconds:g} s")
    return attempt
