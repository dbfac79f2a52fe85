"""Failed authentication is rate limited per client address before any S3 read; unknown tokens are remembered.

A live gateway over the moto server, its S3 requests counted by a CountingStore.
Token records live at ``tokens/<sha256>.json`` in the control bucket, so every
lookup of a well-formed token is one GET under ``tokens/``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.requests import Request

import dropbatch.auth.tokens
from dropbatch.aiorecords import AsyncRecords
from dropbatch.context import Context
from dropbatch.errors import AuthenticationFailed, RateLimited
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from dropbatch.storage.threaded import ThreadedObjectStore
from gateway.auth import TokenAuth, client_address
from gateway.ratelimit import ATTEMPT_RATE, AttemptLimiter, TierRate

pytestmark = pytest.mark.integration

ADMIN = "admin-5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
FLOOD = 50
TOKEN_LOOKUPS = "tokens/"
GENEROUS_ATTEMPTS = TierRate(per_minute=10**6, burst=10**6)
NO_REFILL = TierRate(per_minute=ATTEMPT_RATE.per_minute / 1000, burst=ATTEMPT_RATE.burst)  # the burst, no more


def _garbage() -> str:
    """A token that looks like one (so it is looked up), but that nobody issued."""
    return dropbatch.auth.tokens.TOKEN_PREFIX + secrets.token_urlsafe(32)


def _files(http: httpx.Client, token: str | None) -> httpx.Response:
    return http.get("/v1/files", headers={"Authorization": f"Bearer {token}"} if token else {})


def test_a_flood_of_one_garbage_token_costs_one_s3_read(make_context, counted_context, live_gateway):
    settings = make_context().settings  # buckets created
    ctx = counted_context(settings)
    live = live_gateway(settings, ctx=ctx, attempt_rate=GENEROUS_ATTEMPTS)
    garbage = _garbage()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        answers = [_files(http, garbage) for _ in range(FLOOD)]
    assert {a.status_code for a in answers} == {401}
    assert ctx.store.count("get", TOKEN_LOOKUPS) == 1


def test_garbage_and_missing_tokens_get_429_after_the_burst_without_s3_reads(
    make_context, counted_context, live_gateway
):
    settings = make_context().settings  # buckets created
    ctx = counted_context(settings)
    live = live_gateway(settings, ctx=ctx, attempt_rate=NO_REFILL)

    def attempt(_: int) -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            return _files(http, _garbage())

    with ThreadPoolExecutor(10) as pool:  # at once: the bound holds under concurrency too
        answers = list(pool.map(attempt, range(FLOOD)))
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {401: ATTEMPT_RATE.burst, 429: FLOOD - ATTEMPT_RATE.burst}
    assert ctx.store.count("get", TOKEN_LOOKUPS) <= ATTEMPT_RATE.burst
    limited = next(a for a in answers if a.status_code == 429)
    assert 1 <= int(limited.headers["retry-after"]) <= 120
    assert limited.json()["error"]["type"] == "rate_limit_error"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert _files(http, None).status_code == 429


def test_a_cached_valid_token_still_works_while_its_address_is_limited(make_settings, live_gateway):
    """Guesses from an address do not lock out a tenant whose token this replica already knows."""
    settings = make_settings()
    live = live_gateway(settings, token_cache_seconds=60, attempt_rate=NO_REFILL)
    ctx = live.ctx
    ctx.tenants.create("acme", "basic")
    token = ctx.tokens.create("acme").token
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert _files(http, token).status_code == 200  # in the token cache from now on
        for _ in range(ATTEMPT_RATE.burst):
            assert _files(http, _garbage()).status_code == 401
        assert _files(http, _garbage()).status_code == 429
        assert _files(http, token).status_code == 200, "a cached valid token is not an attempt"


def test_wrong_admin_tokens_get_429_after_the_burst(make_settings, live_gateway):
    settings = make_settings(DROPBATCH_ADMIN_TOKEN=ADMIN)
    live = live_gateway(settings, attempt_rate=NO_REFILL)
    with httpx.Client(base_url=live.url, timeout=30) as http:
        guesses = [
            http.get("/admin/tokens", headers={"Authorization": f"Bearer admin-guess-{n:04d}"})
            for n in range(ATTEMPT_RATE.burst + 5)
        ]
        right_but_late = http.get("/admin/tokens", headers={"Authorization": f"Bearer {ADMIN}"})
    statuses = [g.status_code for g in guesses]
    assert statuses == [401] * ATTEMPT_RATE.burst + [429] * 5
    assert 1 <= int(guesses[-1].headers["retry-after"]) <= 120
    # Past the burst even the right token waits: otherwise guessing would go on, answered by 200 vs 429.
    assert right_but_late.status_code == 429


def test_a_token_created_here_works_at_once_though_it_was_tried_as_unknown(make_settings, live_gateway, monkeypatch):
    settings = make_settings(DROPBATCH_ADMIN_TOKEN=ADMIN)
    live = live_gateway(settings)
    live.ctx.tenants.create("acme", "basic")
    upcoming = "x" * 43  # what secrets.token_urlsafe(32) will answer for the next token
    token = dropbatch.auth.tokens.TOKEN_PREFIX + upcoming
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert _files(http, token).status_code == 401  # unknown, and now remembered as such
        with monkeypatch.context() as patch:
            patch.setattr(dropbatch.auth.tokens.secrets, "token_urlsafe", lambda n: upcoming)
            created = http.post("/admin/tokens", headers={"Authorization": f"Bearer {ADMIN}"}, json={"tenant": "acme"})
        assert created.status_code == 201, created.text
        assert created.json()["token"] == token
        assert _files(http, token).status_code == 200


@pytest.mark.parametrize(
    ("peer", "spends"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:fffe", "2001:db8:1:2::/64"),  # one host's /64: one bucket
    ],
)
def test_attempts_are_counted_per_address_and_per_ipv6_64(peer: str, spends: str):
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "client": (peer, 50000)})
    assert client_address(request) == spends


def test_new_valid_tokens_of_one_address_at_once_spend_no_attempts(make_settings, live_gateway):
    """Many workers behind one address start with fresh tokens at the same moment: every one is let in."""
    settings = make_settings()
    live = live_gateway(settings, attempt_rate=NO_REFILL)
    live.ctx.tenants.create("acme", "enterprise")
    issued = [live.ctx.tokens.create("acme").token for _ in range(4 * ATTEMPT_RATE.burst)]

    def first_use(token: str) -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            return _files(http, token)

    with ThreadPoolExecutor(len(issued)) as pool:
        statuses = Counter(a.status_code for a in pool.map(first_use, issued))
    assert statuses == {200: len(issued)}
    with httpx.Client(base_url=live.url, timeout=30) as http:  # the address still has its whole budget
        assert [_files(http, _garbage()).status_code for _ in range(ATTEMPT_RATE.burst + 1)] == [401] * (
            ATTEMPT_RATE.burst
        ) + [429]


def _peer(token: str, address: str = "10.0.0.1") -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "GET", "path": "/v1/files", "headers": headers, "client": (address, 1)})


def _memory_auth(records_class: type[AsyncRecords] = AsyncRecords, **options) -> tuple[Context, TokenAuth]:
    """A TokenAuth over the in-memory store (awaited through threads), with tenant ``acme`` (enterprise)."""
    settings = Settings.from_env({})
    storage = settings.storage
    ctx = Context(
        settings=settings,
        store=MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket]),
    )
    ctx.tenants.create("acme", "enterprise")
    records = records_class(ThreadedObjectStore(ctx.store), storage.control_bucket)
    return ctx, TokenAuth(ctx.tokens, records, **options)


def test_rechecking_tokens_found_good_spends_no_attempts_of_a_shared_address():
    """Many clients behind one address re-check their good tokens each cache period: never a 429 for that."""
    now = [0.0]
    ctx, auth = _memory_auth(attempts=AttemptLimiter(NO_REFILL, clock=lambda: now[0]), monotonic=lambda: now[0])
    issued = [ctx.tokens.create("acme") for _ in range(3 * ATTEMPT_RATE.burst)]

    async def scenario() -> None:
        for token in issued:
            assert (await auth.authenticate(_peer(token.token))).tenant == "acme"
        for _ in range(ATTEMPT_RATE.burst):  # the shared address spends every attempt it has
            with pytest.raises(AuthenticationFailed):
                await auth.authenticate(_peer(_garbage()))
        with pytest.raises(RateLimited):
            await auth.authenticate(_peer(_garbage()))

        now[0] += 10 * auth.cache_seconds  # every cached lookup is stale: each token is looked up again
        rechecked = {(await auth.authenticate(_peer(t.token))).token_id for t in issued}
        assert rechecked == {t.record.id for t in issued}
        ctx.tokens.revoke(issued[0].record.id)
        now[0] += 10 * auth.cache_seconds
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(_peer(issued[0].token))  # revocation still holds after the cache period
        with pytest.raises(RateLimited):
            await auth.authenticate(_peer(issued[0].token))  # and a revoked token spends attempts again

    asyncio.run(scenario())


def test_a_token_in_steady_use_is_re_read_in_the_background_and_revocation_holds():
    """Past half the cache period the cached record answers while one read refreshes it; never past the period."""
    now = [0.0]
    reads: list[str] = []

    class CountingRecords(AsyncRecords):
        async def get(self, key, cls):
            reads.append(key)
            return await super().get(key, cls)

    ctx, auth = _memory_auth(CountingRecords, monotonic=lambda: now[0])
    issued = ctx.tokens.create("acme")

    async def scenario() -> None:
        await asyncio.gather(*(auth.authenticate(_peer(issued.token)) for _ in range(20)))
        assert len(reads) == 1, "one read in flight per token, however many requests ask"
        now[0] += 0.6 * auth.cache_seconds
        await asyncio.gather(*(auth.authenticate(_peer(issued.token)) for _ in range(20)))
        assert len(reads) == 2, "one refresh past half the period"
        await asyncio.wait_for(asyncio.gather(*auth._reading.values()), 30)  # the background read lands
        ctx.tokens.revoke(issued.record.id)
        now[0] += 0.6 * auth.cache_seconds  # the refreshed record is still fresh: it answers
        await auth.authenticate(_peer(issued.token))
        now[0] += auth.cache_seconds
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(_peer(issued.token))

    asyncio.run(scenario())
