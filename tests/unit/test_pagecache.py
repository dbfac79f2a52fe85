"""The gateway's page cache: finished records for good, others for its ttl, the least recently used out first."""

from __future__ import annotations

from dropbatch.pagecache import PageCache


def final(record: dict) -> bool:
    return record["final"]


def test_a_record_that_can_change_is_shown_for_the_ttl_and_a_final_one_for_good() -> None:
    now = [0.0]
    cache = PageCache(1.0, clock=lambda: now[0])
    cache.put("live", {"final": False})
    cache.put("done", {"final": True})
    now[0] = 0.99
    assert cache.get("live", final=final) == {"final": False}
    now[0] = 1.0
    assert cache.get("live", final=final) is None
    now[0] = 10_000.0
    assert cache.get("done", final=final) == {"final": True}
    cache.put("live", {"final": False, "v": 2})  # read again: fresh from now
    assert cache.get("live", final=final) == {"final": False, "v": 2}
    cache.drop("done")
    assert cache.get("done", final=final) is None and cache.get("never", final=final) is None


def test_it_keeps_the_most_recently_used_records_only() -> None:
    cache = PageCache(1.0, size=3)
    for key in "abc":
        cache.put(key, {"final": True})
    assert cache.get("a", final=final) is not None  # a is now the most recently used
    cache.put("d", {"final": True})
    assert len(cache) == 3
    assert [key for key in "abcd" if cache.get(key, final=final) is not None] == ["a", "c", "d"]


def test_a_zero_ttl_reads_every_record_that_can_change() -> None:
    cache = PageCache(0.0)
    cache.put("live", {"final": False})
    cache.put("done", {"final": True})
    assert cache.get("live", final=final) is None
    assert cache.get("done", final=final) is not None
