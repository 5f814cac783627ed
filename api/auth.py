"""API keys on requests: `Authorization: Bearer <key>`, checked against key storage (models.api_keys)."""

from __future__ import annotations

import time

from models.api_keys import Principal, hash_key


class PrincipalCache:
    """Recently verified keys, by hash, for `ttl` seconds: a polling client costs no key lookup per request.

    A revoked key stops working within `ttl` seconds. Only successes are cached, so a wrong key is always
    checked against the database.
    """

    def __init__(self, ttl: float = 10.0, max_entries: int = 10_000):
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, presented: str) -> Principal | None:
        entry = self._entries.get(hash_key(presented))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, presented: str, principal: Principal) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[hash_key(presented)] = (time.monotonic() + self.ttl, principal)
