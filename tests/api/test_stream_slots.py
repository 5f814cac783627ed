"""Per-owner event stream slots on a real Redis server: the limit, release, renewal while held, and the
lapse of slots whose process stopped renewing them (a crashed API process leaks nothing)."""

from __future__ import annotations

import asyncio

import pytest

from api.errors import APIError
from api.stream_slots import StreamSlots, redis_url
from tests.servers import RedisServer


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def test_redis_url_of_the_embedded_socket():
    assert redis_url("redis+socket:///data/redis/redis.sock") == "unix:///data/redis/redis.sock"
    assert redis_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_limit_release_renewal_and_lapse(broker_url):
    async def scenario() -> None:
        slots = StreamSlots(broker_url, limit=2, seconds=1.5)
        crashed = StreamSlots(broker_url, limit=2, seconds=1.5)  # another API process, about to die
        try:
            held = await slots.acquire("alice")
            slots.hold(held)
            await crashed.acquire("alice")  # never renewed: its process is gone
            with pytest.raises(APIError) as refused:
                await slots.acquire("alice")
            assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
            await slots.acquire("bob")  # owners are counted apart

            await asyncio.sleep(2.5)  # past the slots' lifetime: the held one was renewed, the other lapsed
            replacement = await slots.acquire("alice")
            with pytest.raises(APIError):
                await slots.acquire("alice")

            await slots.release(replacement)
            await slots.release(held)
            assert await slots.redis.zcard(slots.key("alice")) == 0
        finally:
            await crashed.aclose()
            await slots.aclose()

    asyncio.run(scenario())
