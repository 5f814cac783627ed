"""How many event streams each owner holds open, across every API process: counted in Redis (the broker).

Each open stream holds a slot: a member of the owner's sorted set, scored with the time it expires. The
process holding it pushes that time forward every `SLOT_SECONDS / 3` and removes it when the stream ends; a
process that crashed stops pushing, and its slots lapse within `SLOT_SECONDS`. Times come from Redis's own
clock (`TIME` inside the scripts), so API hosts whose clocks disagree still agree on expiry.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.errors import APIError

logger = logging.getLogger("loraq.api")

SLOT_SECONDS = 30.0

# KEYS[1]: the owner's set; ARGV: slot id, limit, seconds. 1 if taken, else 0.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3])) + 1)
return 1
"""
# KEYS[1]: the owner's set; ARGV: seconds, then the slot ids still held (only those still present are renewed).
_RENEW = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return 1
"""


def redis_url(broker_url: str) -> str:
    """The broker URL as redis-py reads it (kombu spells a Unix socket `redis+socket://`)."""
    if broker_url.startswith("redis+socket://"):
        return "unix://" + broker_url.removeprefix("redis+socket://")
    return broker_url


@dataclass(frozen=True)
class Slot:
    owner: str
    id: str


class StreamSlots:
    def __init__(self, broker_url: str, limit: int, seconds: float = SLOT_SECONDS):
        self.redis = aioredis.Redis.from_url(redis_url(broker_url))
        self.limit, self.seconds = limit, seconds
        self.held: dict[str, set[str]] = {}  # owner -> slots of this process's running streams
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._renewer: asyncio.Task | None = None

    @staticmethod
    def key(owner: str) -> str:
        return f"loraq:event-streams:{owner}"

    async def acquire(self, owner: str) -> Slot:
        """A slot for a new stream of `owner`'s, or a 429 when they hold the most allowed."""
        slot = Slot(owner, uuid.uuid4().hex)
        try:
            taken = await self._acquire(keys=[self.key(owner)], args=[slot.id, self.limit, self.seconds])
        except RedisError as exc:
            logger.warning("event stream slots: the broker failed: %s", exc)
            raise APIError(503, "Event streams are unavailable: the broker cannot be reached.") from exc
        if not taken:
            raise APIError(
                429,
                f"You have {self.limit} open event streams, the most allowed; close one (or wait for a closed "
                "one to lapse) and try again.",
                code="too_many_event_streams",
                headers={"Retry-After": str(int(self.seconds))},
            )
        return slot

    def hold(self, slot: Slot) -> None:
        """The stream is running: keep its slot alive until release()."""
        self.held.setdefault(slot.owner, set()).add(slot.id)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_held(), name="event stream slots")

    async def release(self, slot: Slot) -> None:
        owned = self.held.get(slot.owner)
        if owned is not None:
            owned.discard(slot.id)
            if not owned:
                del self.held[slot.owner]
        try:
            await self.redis.zrem(self.key(slot.owner), slot.id)
        except RedisError:
            logger.warning("event stream slot %s not released (it lapses by itself)", slot.id, exc_info=True)

    async def _renew_held(self) -> None:
        while self.held:
            await asyncio.sleep(self.seconds / 3)
            for owner, slots in list(self.held.items()):
                try:
                    await self._renew(keys=[self.key(owner)], args=[self.seconds, *slots])
                except RedisError:
                    logger.warning("event stream slots of %s not renewed", owner, exc_info=True)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        with anyio.CancelScope(shield=True):
            await self.redis.aclose()
