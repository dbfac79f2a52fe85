"""The gateway's page cache: final records for good, others for its ttl, the least recently used out first."""

from __future__ import annotations

import asyncio
import logging

from dropbatch.aiorecords import Refreshes
from dropbatch.errors import StorageError
from dropbatch.pagecache import Listings, PageCache


def final(record: dict) -> bool:
    return record["final"]


def test_a_record_that_can_change_is_shown_for_the_ttl_and_a_final_one_for_good() -> None:
    now = [0.0]
    cache = PageCache(1.0, final=final, clock=lambda: now[0])
    cache.put("live", {"final": False})
    cache.put("done", {"final": True})
    now[0] = 0.99
    assert cache.get("live") == {"final": False}
    assert cache.get("live", changing_too=False) is None  # what a retrieve asks: final ones only
    now[0] = 1.0
    assert cache.get("live") is None
    now[0] = 10_000.0
    assert cache.get("done") == cache.get("done", changing_too=False) == {"final": True}
    cache.put("live", {"final": False, "v": 2})  # read again: fresh from now
    assert cache.get("live") == {"final": False, "v": 2}
    cache.drop("done")
    assert cache.get("done") is None and cache.get("never") is None


def test_a_read_cannot_replace_what_was_written_or_read_while_it_was_on_its_way() -> None:
    cache = PageCache(1.0, final=final)
    cache.put("b", {"final": False, "status": "validating"})
    before_cancel = cache.ticket()  # a list page's read is sent ...
    cache.put("b", {"final": False, "status": "cancelling"})  # ... our cancel is written ...
    cache.put("b", {"final": False, "status": "validating"}, since=before_cancel)  # ... and the old read lands
    assert cache.get("b") == {"final": False, "status": "cancelling"}

    now = cache.ticket()
    cache.put("b", {"final": False, "status": "in_progress"}, since=now)  # a read sent after: it is newer
    assert cache.get("b") == {"final": False, "status": "in_progress"}

    cache.put("b", {"final": True, "status": "completed"}, since=cache.ticket())
    cache.put("b", {"final": False, "status": "in_progress"}, since=cache.ticket())  # older, whatever its ticket
    assert cache.get("b") == {"final": True, "status": "completed"}


def test_it_keeps_the_most_recently_used_records_that_fit_its_budget() -> None:
    cache = PageCache(1.0, final=final, weight=lambda record: record["weight"], budget=6)
    for key in "abc":
        cache.put(key, {"final": True, "weight": 2})
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", {"final": True, "weight": 2})
    assert (len(cache), cache.held) == (3, 6)
    assert [key for key in "abcd" if cache.get(key) is not None] == ["a", "c", "d"]
    cache.put("big", {"final": True, "weight": 5})  # room for it means room for nothing else
    assert [key for key in ("a", "c", "d", "big") if cache.get(key) is not None] == ["big"]
    cache.put("big", {"final": True, "weight": 1})  # replaced: its old weight is given back
    cache.drop("big")
    assert (len(cache), cache.held) == (0, 0)


def test_a_zero_ttl_keeps_nothing() -> None:
    cache = PageCache(0.0, final=final)
    cache.put("live", {"final": False})
    cache.put("done", {"final": True})
    assert cache.get("live") is None and cache.get("done") is None and len(cache) == 0


def test_a_listed_window_is_kept_for_the_ttl_and_forgotten_when_this_process_deletes_under_its_prefix() -> None:
    now = [0.0]
    listings = Listings(1.0, size=3, clock=lambda: now[0])
    listings.put("idx/acme/", None, 21, ["k2", "k1"], since=listings.ticket())
    listings.put("idx/bob/", None, 21, ["b1"], since=listings.ticket())
    now[0] = 0.99
    assert listings.get("idx/acme/", None, 21) == ["k2", "k1"]
    assert listings.get("idx/acme/", "k2", 21) is None and listings.get("idx/acme/", None, 6) is None  # other windows

    listings.forget("idx/acme/")  # a file deleted here
    assert listings.get("idx/acme/", None, 21) is None and listings.get("idx/bob/", None, 21) == ["b1"]
    now[0] = 1.0
    assert listings.get("idx/bob/", None, 21) is None  # its ttl is over


def test_a_list_sent_before_a_write_here_is_not_kept() -> None:
    listings = Listings(1.0)
    sent = listings.ticket()  # a page's LIST is sent ...
    listings.forget("idx/acme/")  # ... a delete here removes an index key ...
    listings.put("idx/acme/", None, 21, ["k1"], since=sent)  # ... and the LIST that may miss it lands
    assert listings.get("idx/acme/", None, 21) is None
    listings.put("idx/bob/", None, 21, ["b1"], since=sent)  # another prefix's LIST is still good
    listings.put("idx/acme/", None, 21, ["k2", "k1"], since=listings.ticket())  # a LIST sent after the write
    assert listings.get("idx/acme/", None, 21) == ["k2", "k1"] and listings.get("idx/bob/", None, 21) == ["b1"]


def test_listings_keep_the_most_recently_used_windows_and_nothing_with_a_zero_ttl() -> None:
    listings = Listings(1.0, size=2)
    for prefix in "abc":
        listings.put(prefix, None, 21, [prefix], since=listings.ticket())
        listings.get("a", None, 21)  # "a" is used after every put
    assert len(listings) == 2 and listings.get("b", None, 21) is None and listings.get("a", None, 21) == ["a"]

    off = Listings(0.0)
    off.put("a", None, 21, ["a"], since=off.ticket())
    assert len(off) == 0 and off.get("a", None, 21) is None


def test_a_key_created_here_joins_the_kept_windows_as_a_list_would_show_it() -> None:
    listings = Listings(1.0)
    for start_after, n, keys in [(None, 3, ["b", "d", "f"]), ("d", 3, ["f"]), (None, 5, ["b", "d", "f"])]:
        listings.put("p/", start_after, n, keys, since=listings.ticket())
    sent = listings.ticket()
    listings.add("p/", "c")
    assert listings.get("p/", None, 3) == ["b", "c", "d"]  # a full window: the last key is pushed out
    assert listings.get("p/", "d", 3) == ["f"]  # "c" is before this window
    assert listings.get("p/", None, 5) == ["b", "c", "d", "f"]  # a window that held every key takes it
    listings.add("p/", "g")
    assert listings.get("p/", None, 3) == ["b", "c", "d"] and listings.get("p/", "d", 3) == ["f", "g"]
    listings.put("p/", None, 3, ["b", "d", "f"], since=sent)  # a LIST sent before the creates
    assert listings.get("p/", None, 3) == ["b", "c", "d"]


def test_a_page_is_read_again_once_at_a_time_and_the_reads_stop_with_the_gateway(caplog) -> None:
    started: list[str] = []

    async def forever(window: str) -> None:
        started.append(window)
        await asyncio.sleep(3600)

    async def failing() -> None:
        raise StorageError("s3 is down")

    async def main() -> None:
        refreshes = Refreshes()
        refreshes.start("a", lambda: forever("a"))
        refreshes.start("a", lambda: forever("a again"))  # one re-read of a page at a time
        refreshes.start("b", lambda: forever("b"))
        refreshes.start("c", failing)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert started == ["a", "b"]
        await asyncio.wait_for(refreshes.close(), timeout=5)  # the gateway stops: nothing is left running
        refreshes.start("a", lambda: forever("a later"))  # a window whose re-read ended can start another
        await asyncio.sleep(0)
        assert started[-1] == "a later"
        await refreshes.close()

    with caplog.at_level(logging.WARNING, logger="dropbatch.gateway"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ["could not refresh a kept list page"]


def test_what_a_read_got_is_as_old_as_the_moment_it_was_sent() -> None:
    now = [0.0]
    cache = PageCache(1.0, final=final, clock=lambda: now[0])
    listings = Listings(1.0, clock=lambda: now[0])
    record_sent, list_sent = cache.ticket(), listings.ticket()
    now[0] = 0.6  # a slow read and LIST land
    cache.put("b", {"final": False}, since=record_sent)
    listings.put("p/", None, 21, ["k"], since=list_sent)
    assert cache.due("b") and listings.due("p/", None, 21)  # half their ttl old already
    now[0] = 0.99
    assert cache.get("b") == {"final": False} and listings.get("p/", None, 21) == ["k"]
    now[0] = 1.0  # 1 s after they were sent, not after they landed
    assert cache.get("b") is None and listings.get("p/", None, 21) is None
