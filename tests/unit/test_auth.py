"""Tenants, signing keys, and the rolling hourly quota ledger."""

from __future__ import annotations

import threading

import pytest

from dropbatch.auth.quota import WINDOW_SECONDS, QuotaLedger
from dropbatch.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded
from dropbatch.storage.keys import ControlKeys


def test_create_tenant_and_duplicate(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    tenant = ctx.tenants.create("acme", "premium")
    assert (tenant.name, tenant.tier, tenant.created_at) == ("acme", "premium", int(clock()))
    assert ctx.tenants.get("acme") == tenant
    with pytest.raises(Conflict) as info:
        ctx.tenants.create("acme", "free")
    assert info.value.code == "tenant_exists"
    assert ctx.tenants.get("acme").tier == "premium"  # the duplicate changed nothing
    with pytest.raises(NotFound):
        ctx.tenants.get("nobody")


@pytest.mark.parametrize("tier", ["gold", "", "FREE"])
def test_bad_tier(make_context, tier: str) -> None:
    ctx = make_context()
    with pytest.raises(InvalidRequest) as info:
        ctx.tenants.create("acme", tier)
    assert info.value.code == "invalid_tier"
    with pytest.raises(NotFound):
        ctx.tenants.get("acme")


def test_configured_tiers_are_the_tiers(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="gold=7")
    assert ctx.tenants.create("acme", "gold").tier == "gold"


@pytest.mark.parametrize("name", ["../x", ".acme", "a/b", "x" * 129])
def test_bad_tenant_name(make_context, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        make_context().tenants.create(name, "free")
    assert info.value.code == "invalid_tenant"


def test_set_tier(make_context) -> None:
    ctx = make_context()
    ctx.tenants.create("acme", "free")
    assert ctx.tenants.set_tier("acme", "enterprise").tier == "enterprise"
    with pytest.raises(InvalidRequest):
        ctx.tenants.set_tier("acme", "gold")
    with pytest.raises(NotFound):
        ctx.tenants.set_tier("nobody", "free")


def test_signing_keys(make_context, make_tenant, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    _, key = make_tenant(ctx, "acme", "basic")
    other = ctx.tenants.create_signing_key("acme")
    assert key.key_id != other.key_id and key.secret != other.secret
    assert key.key_id.startswith("key_") and len(key.secret) >= 32
    assert ctx.tenants.signing_key(key.key_id) == key
    with pytest.raises(NotFound):
        ctx.tenants.create_signing_key("nobody")
    clock.advance(10)
    revoked = ctx.tenants.revoke_signing_key(key.key_id)
    assert revoked.revoked_at == int(clock())
    clock.advance(10)
    assert ctx.tenants.revoke_signing_key(key.key_id).revoked_at == revoked.revoked_at  # first revocation stands
    assert ctx.tenants.signing_key(key.key_id).revoked_at == revoked.revoked_at
    assert ctx.tenants.signing_key(other.key_id).revoked_at is None
    with pytest.raises(NotFound):
        ctx.tenants.revoke_signing_key("key_0000")


@pytest.mark.parametrize("key_id", ["key_missing1", "../tenants/acme", "key_../../x", "", "key_"])
def test_unknown_or_malformed_key_ids(make_context, key_id: str) -> None:
    with pytest.raises(NotFound):
        make_context().tenants.signing_key(key_id)


def test_audit_log_never_holds_secrets(make_context, make_tenant) -> None:
    ctx = make_context()
    _, key = make_tenant(ctx, "acme", "basic")
    ctx.tenants.revoke_signing_key(key.key_id)
    events = [ctx.store.get(ctx.records.bucket, i.key)[0] for i in ctx.store.list(ctx.records.bucket, "audit/")]
    assert len(events) == 3
    assert all(key.secret.encode() not in e for e in events)


# -- quotas -----------------------------------------------------------------------------


def test_rolling_window(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_TIER_QUOTAS="free=100")
    q = ctx.quotas
    q.reserve("acme", "free", "b1", 60)
    clock.advance(600)
    q.reserve("acme", "free", "b2", 40)
    assert q.usage("acme", "free") == (100, 100)
    with pytest.raises(QuotaExceeded):
        q.reserve("acme", "free", "b3", 1)
    clock.advance(WINDOW_SECONDS - 600)  # b1 is exactly an hour old: out of the window
    assert q.usage("acme", "free") == (40, 100)
    q.reserve("acme", "free", "b3", 60)
    assert q.usage("acme", "free") == (100, 100)
    clock.advance(WINDOW_SECONDS)
    assert q.usage("acme", "free") == (0, 100)


def test_reserve_is_idempotent_per_batch(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="free=100")
    for _ in range(3):
        ctx.quotas.reserve("acme", "free", "b1", 70)
    assert ctx.quotas.usage("acme", "free") == (70, 100)
    ledger = ctx.records.get(ControlKeys.quota("acme"), QuotaLedger)
    assert ledger is not None and [e.batch_id for e in ledger.entries] == ["b1"]


def test_release_gives_lines_back(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="free=100")
    ctx.quotas.release("acme", "never-reserved")  # nothing to release is fine
    ctx.quotas.reserve("acme", "free", "b1", 70)
    ctx.quotas.release("acme", "b1")
    assert ctx.quotas.usage("acme", "free") == (0, 100)
    ctx.quotas.reserve("acme", "free", "b2", 100)


def test_quota_is_per_tenant(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="free=100")
    ctx.quotas.reserve("acme", "free", "b1", 100)
    ctx.quotas.reserve("other", "free", "b2", 100)
    assert ctx.quotas.usage("other", "free") == (100, 100)


def test_retry_at_is_when_enough_lines_fall_out(make_context, make_clock) -> None:
    clock = make_clock()
    t0 = int(clock())
    ctx = make_context(clock=clock, DROPBATCH_TIER_QUOTAS="free=100")
    ctx.quotas.reserve("acme", "free", "b1", 60)
    clock.advance(600)
    ctx.quotas.reserve("acme", "free", "b2", 30)
    clock.advance(600)
    with pytest.raises(QuotaExceeded) as info:
        ctx.quotas.reserve("acme", "free", "b3", 50)
    # 90 used + 50 = 140: 40 must fall out, which happens when the 60 from t0 does.
    assert info.value.retry_at == t0 + WINDOW_SECONDS
    assert info.value.status_code == 429 and info.value.code == "quota_exceeded"
    with pytest.raises(QuotaExceeded) as info:
        ctx.quotas.reserve("acme", "free", "b4", 75)
    # 90 + 75 = 165: 65 must fall out, so the 30 from t0+600 must go too.
    assert info.value.retry_at == t0 + 600 + WINDOW_SECONDS
    clock.now = t0 + WINDOW_SECONDS
    ctx.quotas.reserve("acme", "free", "b3", 50)  # and then it does fit


def test_more_lines_than_the_limit_can_never_fit(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_TIER_QUOTAS="free=100")
    with pytest.raises(QuotaExceeded) as info:
        ctx.quotas.reserve("acme", "free", "big", 101)
    assert "can never fit" in info.value.message
    assert info.value.retry_at == int(clock())
    assert ctx.quotas.usage("acme", "free") == (0, 100)
    ctx.quotas.reserve("acme", "free", "exact", 100)


def test_quota_error_says_what_was_counted(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="free=100")
    with pytest.raises(QuotaExceeded) as info:
        ctx.quotas.reserve("acme", "free", "emb", 150, lines=1)
    assert "150 requests (from 1 request line: each embeddings input" in info.value.message
    ctx.quotas.reserve("acme", "free", "b1", 90, lines=3)
    with pytest.raises(QuotaExceeded) as info:
        ctx.quotas.reserve("acme", "free", "b2", 20, lines=20)
    assert "asks for 20 requests but the free tier has 10 of 100 left" in info.value.message
    assert ctx.quotas.usage("acme", "free") == (90, 100)


def test_concurrent_reserves_never_over_admit(make_context) -> None:
    ctx = make_context(DROPBATCH_TIER_QUOTAS="free=100")
    admitted: list[int] = []
    refused: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def reserve(i: int) -> None:
        start.wait()
        try:
            ctx.quotas.reserve("acme", "free", f"b{i}", 15)
            admitted.append(i)
        except QuotaExceeded:
            refused.append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(admitted) == 6 and len(refused) == 6  # 6 * 15 = 90 <= 100 < 7 * 15
    used, _ = ctx.quotas.usage("acme", "free")
    assert used == 90
    ledger = ctx.records.get(ControlKeys.quota("acme"), QuotaLedger)
    assert ledger is not None and sorted(e.batch_id for e in ledger.entries) == sorted(f"b{i}" for i in admitted)
