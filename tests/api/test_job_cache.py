"""The job cache of the polled reads: a read that raced a change is never stored."""

from __future__ import annotations

from api.job_reads import JobCache


def test_inactive_cache_stores_nothing():
    cache = JobCache()
    cache.put("ftjob-a", "alice", b"{}", cache.generation)
    assert cache.get("ftjob-a") is None


def test_put_get_and_evict():
    cache = JobCache()
    cache.reset(active=True)
    cache.put("ftjob-a", "alice", b"v1", cache.generation)
    assert cache.get("ftjob-a") == ("alice", b"v1")
    cache.evict("ftjob-a")
    assert cache.get("ftjob-a") is None


def test_read_that_raced_a_notification_is_dropped():
    cache = JobCache()
    cache.reset(active=True)
    before = cache.generation  # a read starts ...
    cache.evict("ftjob-a")  # ... the row changes and its notification arrives ...
    cache.put("ftjob-a", "alice", b"stale", before)  # ... and the read's (possibly stale) result comes back
    assert cache.get("ftjob-a") is None


def test_losing_the_listener_empties_and_disables():
    cache = JobCache()
    cache.reset(active=True)
    cache.put("ftjob-a", "alice", b"v1", cache.generation)
    cache.reset(active=False)
    assert cache.get("ftjob-a") is None
    cache.put("ftjob-a", "alice", b"v1", cache.generation)
    assert cache.get("ftjob-a") is None
