"""Webhook signatures per the Standard Webhooks spec (https://www.standardwebhooks.com/).

Each endpoint has a secret `whsec_<base64 of 32 random bytes>`. A delivery carries `webhook-id` (the message
id, the same on every attempt), `webhook-timestamp` (Unix seconds of this attempt) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed with the decoded secret>`.
While a rotated-out secret is kept active (`rotate_secret` with keep-old), a delivery carries one signature per
active secret, space-separated, as the spec allows: a receiver holding either secret verifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """Enough of a secret to tell two apart, not enough to sign with."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    signing_secrets: Sequence[str], message_id: str, body: str, timestamp: int | None = None
) -> dict[str, str]:
    """The headers of one delivery attempt, signed with each of the endpoint's active secrets."""
    if not signing_secrets:
        raise ValueError("a delivery needs at least one signing secret")
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(secret, message_id, timestamp, body) for secret in signing_secrets),
    }
