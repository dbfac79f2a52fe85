"""Bounded work per request: /generate_batch waits with backoff and pays for its polls.

A live gateway over the moto server, its S3 requests counted by a CountingStore.
No watcher runs, so every submitted batch stays ``validating`` and each caller
waits its whole timeout (or until its rate limit is spent).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dropbatch.storage.keys import ControlKeys
from gateway.ratelimit import TierRate

pytestmark = pytest.mark.integration

WAITERS = 10
WAIT_SECONDS = 3.0
# Reads of the batch one wait of WAIT_SECONDS may make: 0.25 s doubling to 2 s is
# 0.25, 0.75, 1.75, then the deadline (4); polling every 0.25 s was 12.
READS_PER_WAIT = 5


def _generate(url: str, token: str, timeout: float) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as http:
        return http.post(
            "/generate_batch",
            headers={"Authorization": f"Bearer {token}"},
            json={"prompts": ["hello", "world"], "timeout": timeout},
        )


def test_concurrent_waits_make_a_bounded_number_of_s3_reads(make_context, counted_context, live_gateway):
    settings = make_context().settings  # buckets created
    ctx = counted_context(settings)
    live = live_gateway(settings, ctx=ctx, token_cache_seconds=60)
    ctx.tenants.create("acme", "enterprise")
    token = ctx.tokens.create("acme").token

    with ThreadPoolExecutor(WAITERS) as pool:
        answers = list(pool.map(lambda _: _generate(live.url, token, WAIT_SECONDS), range(WAITERS)))

    assert [a.status_code for a in answers] == [202] * WAITERS, answers[0].text
    batch_ids = {a.json()["batch_id"] for a in answers}
    assert len(batch_ids) == WAITERS and all(a.json()["status"] == "validating" for a in answers)
    batch_records = ControlKeys.batch("acme", "x").removesuffix("x.json")
    reads = ctx.store.count("get", batch_records)
    assert WAITERS <= reads <= WAITERS * READS_PER_WAIT, f"{reads} reads of batch records for {WAITERS} waits"


def test_a_wait_spends_the_callers_rate_limit_and_answers_202_when_it_is_gone(make_settings, live_gateway):
    settings = make_settings()
    # 3 calls at once, then one every 10 s: the call itself and one poll use it up.
    live = live_gateway(settings, rate_limits={"basic": TierRate(per_minute=6, burst=3)})
    live.ctx.tenants.create("acme", "basic")
    token = live.ctx.tokens.create("acme").token

    started = time.monotonic()
    answer = _generate(live.url, token, timeout=60)
    waited = time.monotonic() - started

    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["batch_id"]
    assert waited < 10, f"waited {waited:.1f} s with no rate limit left"
    poll = httpx.get(f"{live.url}/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {token}"})
    assert poll.status_code == 429 and int(poll.headers["retry-after"]) >= 1
