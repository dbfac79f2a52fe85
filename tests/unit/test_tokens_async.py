"""The gateway's token administration (``AsyncTokens``, /admin/tokens) over the same records as the CLI's ``Tokens``."""

from __future__ import annotations

import asyncio

import pytest
from helpers import audit_events

from dropbatch.aiorecords import AsyncRecords
from dropbatch.auth.tenants import AsyncTenants
from dropbatch.auth.tokens import AsyncTokens
from dropbatch.errors import AuthenticationFailed, InvalidRequest, NotFound
from dropbatch.storage.threaded import ThreadedObjectStore


def async_tokens(ctx) -> AsyncTokens:
    records = AsyncRecords(ThreadedObjectStore(ctx.store), ctx.settings.storage.control_bucket)
    tenants = AsyncTenants(records, clock=ctx.clock)
    return AsyncTokens(records, tenants, tiers=ctx.settings.limits.tier_quotas, clock=ctx.clock)


def test_a_token_issued_by_the_gateway_is_the_one_the_cli_would_issue(make_context, make_clock) -> None:
    ctx = make_context(clock=make_clock())
    ctx.tenants.create("acme", "basic")
    tokens = async_tokens(ctx)

    issued = asyncio.run(tokens.create("acme", expires_in=60))
    premium = asyncio.run(tokens.create("acme", tier="premium"))

    record = ctx.tokens.authenticate(issued.token)
    assert record == issued.record
    assert (record.tenant, record.tier, record.expires_at) == ("acme", "basic", int(ctx.clock()) + 60)
    assert ctx.tokens.authenticate(premium.token).tier == "premium"
    assert ctx.tokens.get(issued.record.id) == issued.record  # the id index leads to the record
    created = audit_events(ctx, "token.created")
    assert sorted((e["token_id"], e["tier"]) for e in created) == sorted(
        [(issued.record.id, "basic"), (premium.record.id, "premium")]
    )
    assert issued.token not in str(created)


@pytest.mark.parametrize(
    ("tenant", "options", "error", "code"),
    [
        ("nobody", {}, NotFound, None),
        ("acme", {"tier": "gold"}, InvalidRequest, "invalid_tier"),
        ("acme", {"expires_in": 0}, InvalidRequest, None),
        ("../acme", {}, InvalidRequest, None),
    ],
)
def test_refused_creations_store_nothing(make_context, tenant, options, error, code) -> None:
    ctx = make_context()
    ctx.tenants.create("acme", "basic")
    with pytest.raises(error) as refused:
        asyncio.run(async_tokens(ctx).create(tenant, **options))
    with pytest.raises(error) as sync_refused:
        ctx.tokens.create(tenant, **options)
    assert refused.value.to_openai() == sync_refused.value.to_openai()  # the CLI's answer, word for word
    if code is not None:
        assert refused.value.code == code
    assert list(ctx.tokens.list()) == [] and audit_events(ctx, "token.created") == []


def test_listing_is_the_clis_listing(make_context) -> None:
    ctx = make_context()
    for tenant in ("acme", "bolt"):
        ctx.tenants.create(tenant, "basic")
    tokens = async_tokens(ctx)
    for tenant in ("acme", "bolt", "acme"):
        ctx.tokens.create(tenant)
        asyncio.run(tokens.create(tenant))

    everyone = asyncio.run(tokens.list())
    assert len(everyone) == 6 and everyone == list(ctx.tokens.list())
    acme = asyncio.run(tokens.list("acme"))
    assert acme == list(ctx.tokens.list("acme")) and {r.tenant for r in acme} == {"acme"} and len(acme) == 4
    assert asyncio.run(tokens.list("nobody")) == []


def test_revoking_takes_effect_for_every_reader_and_is_idempotent(make_context, make_clock) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock)
    ctx.tenants.create("acme", "basic")
    tokens = async_tokens(ctx)
    issued = ctx.tokens.create("acme")

    revoked = asyncio.run(tokens.revoke(issued.record.id))
    clock.now += 100
    again = asyncio.run(tokens.revoke(issued.record.id))

    assert revoked.revoked_at == again.revoked_at == int(clock.now) - 100
    with pytest.raises(AuthenticationFailed):
        ctx.tokens.authenticate(issued.token)
    assert [e["token_id"] for e in audit_events(ctx, "token.revoked")] == [issued.record.id] * 2
    for unknown in ("tok_0000000000000000", "tok_../../x", "nope"):
        with pytest.raises(NotFound):
            asyncio.run(tokens.revoke(unknown))
