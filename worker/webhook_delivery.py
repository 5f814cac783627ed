"""Webhook delivery: a thread in every worker process sends the outbox's due rows (models.webhook_outbox).

Per row: claim it under a lease, read the endpoint's URL and secrets as they are now (an update or a secret
rotation since the event applies to it), check the URL again (DNS may have changed since registration) and
connect to the address that was checked, POST the stored body signed for this attempt (loraq.webhook_attempts,
which the API's test route uses too), then record a 2xx as delivered (it is never sent again) or schedule a
retry with exponential backoff and jitter, until `webhook_retry_for_seconds` after the event, when the row is
given up (`failed`). A worker killed mid-request
leaves a lease that runs out; another worker then sends the same message again, with the same `webhook-id`:
delivery is at-least-once, and receivers deduplicate on that id, as the Standard Webhooks spec asks.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from datetime import datetime, timedelta

from sqlalchemy import select

from loraq.settings import Settings
from loraq.webhook_attempts import attempt_delivery_within
from models import WebhookEndpoint, utcnow
from models.session import session_scope
from models.webhook_outbox import claim_delivery, mark_delivered, record_failed_attempt

logger = logging.getLogger("loraq.webhooks")

MAX_RETRY_DELAY_SECONDS = 4 * 3600


def retry_delay(attempts: int, base_seconds: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base · 2^(attempts-1), capped at four hours, times
    a random factor in [0.5, 1] so that endpoints that failed together do not retry together."""
    delay = min(base_seconds * 2 ** min(attempts - 1, 30), MAX_RETRY_DELAY_SECONDS)
    return delay * (0.5 + 0.5 * (rng or random).random())


def next_attempt_at(
    created_at: datetime, attempts: int, now: datetime, settings: Settings, rng: random.Random | None = None
) -> datetime | None:
    """When to try again, or None to give up: a retry later than `webhook_retry_for_seconds` after the event
    is not made."""
    at = now + timedelta(seconds=retry_delay(attempts, settings.webhook_retry_base_seconds, rng))
    return at if at <= created_at + timedelta(seconds=settings.webhook_retry_for_seconds) else None


def attempt_seconds(settings: Settings) -> float:
    """All one attempt may take (connect, send, the answer's head), whatever the receiver does: httpx's timeout
    bounds each read, and a receiver trickling its answer would otherwise outlast the lease below."""
    return 2 * settings.webhook_timeout_seconds


def delivery_lease_seconds(settings: Settings) -> float:
    """Longer than one attempt can take (and its URL check), so no second worker claims a row while it is being
    sent."""
    return attempt_seconds(settings) + settings.webhook_timeout_seconds + 5


class WebhookSender:
    """Claims and sends due deliveries, one at a time."""

    def __init__(self, settings: Settings, worker_id: str):
        self.settings, self.worker_id = settings, worker_id
        self.db = settings.resolved_database_url

    def send_next(self) -> bool:
        """Deliver one due row; False if none is due."""
        with session_scope(self.db) as session:
            delivery = claim_delivery(session, self.worker_id, delivery_lease_seconds(self.settings))
            if delivery is None:
                return False
            endpoint = session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.id == delivery.endpoint_id)
            ).one_or_none()
        if endpoint is None:
            return True  # deleted meanwhile, and its deliveries with it
        url = endpoint.url
        attempt = attempt_delivery_within(
            attempt_seconds(self.settings), self.settings.webhook_timeout_seconds, url,
            endpoint.signing_secrets(utcnow()), delivery.id, delivery.payload, self.settings.webhook_allowed_host_set,
        )  # fmt: skip
        with session_scope(self.db) as session:
            if attempt.delivered:
                mark_delivered(session, delivery.id, attempt.status_code or 200)
            else:
                retry_at = next_attempt_at(delivery.created_at, delivery.attempts, utcnow(), self.settings)
                record_failed_attempt(
                    session, delivery.id, self.worker_id, attempt.status_code, attempt.error or "", retry_at
                )
                logger.info("webhook %s to %s: attempt %d failed (%s); %s", delivery.id, url, delivery.attempts,
                            attempt.error, f"retry at {retry_at:%H:%M:%S}" if retry_at else "giving up")  # fmt: skip
        return True


def start_webhook_thread(settings: Settings) -> threading.Event:
    """Send due webhook deliveries in a daemon thread, looking every `webhook_poll_seconds` when none is due;
    set the returned event to stop."""
    stop = threading.Event()
    sender = WebhookSender(settings, f"{socket.gethostname()}:{os.getpid()}")

    def loop() -> None:
        while not stop.is_set():
            try:
                if sender.send_next():
                    continue
            except Exception:
                logger.exception("webhook delivery pass failed; retrying")
            stop.wait(settings.webhook_poll_seconds)

    threading.Thread(target=loop, name="loraq-webhooks", daemon=True).start()
    return stop
