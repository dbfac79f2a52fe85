"""Tenants and their manifest signing keys, kept in the control bucket.

A signing key's secret must be readable by the watcher to check an HMAC, so unlike
bearer tokens it cannot be stored as a hash; it lives only in the service-only
control bucket (encrypted at rest by the bucket) and is shown to the client once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from dropbatch.aiorecords import AsyncRecords
from dropbatch.errors import Conflict, InvalidRequest, NotFound, ObjectExists
from dropbatch.records import Clock, Records, audit
from dropbatch.storage.keys import ControlKeys, check_name


class Tenant(BaseModel):
    name: str
    tier: str
    created_at: int


class SigningKey(BaseModel):
    key_id: str
    tenant: str
    secret: str
    created_at: int
    revoked_at: int | None = None


class TenantRegistry:
    def __init__(self, records: Records, *, tiers: dict[str, int], clock: Clock) -> None:
        self.records = records
        self.tiers = tiers
        self.clock = clock

    def check_tier(self, tier: str) -> str:
        return check_tier(self.tiers, tier)

    def create(self, name: str, tier: str) -> Tenant:
        tenant = Tenant(name=check_name(name, "tenant"), tier=self.check_tier(tier), created_at=int(self.clock()))
        try:
            self.records.create(ControlKeys.tenant(name), tenant)
        except ObjectExists:
            raise Conflict(f"tenant {name!r} already exists", code="tenant_exists") from None
        audit(self.records, "tenant.created", now=self.clock(), tenant=name, tier=tier)
        return tenant

    def get(self, name: str) -> Tenant:
        tenant = self.records.get(ControlKeys.tenant(name), Tenant)
        if tenant is None:
            raise tenant_not_found(name)
        return tenant

    def set_tier(self, name: str, tier: str) -> Tenant:
        self.check_tier(tier)

        def change(tenant: Tenant) -> None:
            tenant.tier = tier

        self.get(name)
        return self.records.update(ControlKeys.tenant(name), Tenant, change)

    def create_signing_key(self, tenant: str) -> SigningKey:
        """A new key for ``tenant``; the caller shows ``secret`` once and never again."""
        self.get(tenant)
        key = new_signing_key(tenant, int(self.clock()))
        self.records.create(ControlKeys.signing_key(key.key_id), key)
        audit(self.records, "signing_key.created", now=self.clock(), tenant=tenant, key_id=key.key_id)
        return key

    def signing_key(self, key_id: str) -> SigningKey:
        key = self.records.get(ControlKeys.signing_key(key_id), SigningKey) if is_key_id(key_id) else None
        if key is None:
            raise signing_key_not_found(key_id)
        return key

    def revoke_signing_key(self, key_id: str) -> SigningKey:
        now = int(self.clock())
        self.signing_key(key_id)
        key = self.records.update(ControlKeys.signing_key(key_id), SigningKey, revoker(now))
        audit(self.records, "signing_key.revoked", now=now, tenant=key.tenant, key_id=key_id)
        return key


class AsyncTenants:
    """What the gateway's batch creation needs of ``TenantRegistry``, awaited: the same records and audit events."""

    def __init__(self, records: AsyncRecords, *, clock: Clock) -> None:
        self.records = records
        self.clock = clock

    async def get(self, name: str) -> Tenant:
        tenant = await self.records.get(ControlKeys.tenant(name), Tenant)
        if tenant is None:
            raise tenant_not_found(name)
        return tenant

    async def create_signing_key(self, tenant: str) -> SigningKey:
        await self.get(tenant)
        key = new_signing_key(tenant, int(self.clock()))
        await self.records.create(ControlKeys.signing_key(key.key_id), key)
        await self.records.audit("signing_key.created", now=self.clock(), tenant=tenant, key_id=key.key_id)
        return key

    async def signing_key(self, key_id: str) -> SigningKey:
        key = await self.records.get(ControlKeys.signing_key(key_id), SigningKey) if is_key_id(key_id) else None
        if key is None:
            raise signing_key_not_found(key_id)
        return key

    async def revoke_signing_key(self, key_id: str) -> SigningKey:
        now = int(self.clock())
        await self.signing_key(key_id)
        key = await self.records.update(ControlKeys.signing_key(key_id), SigningKey, revoker(now))
        await self.records.audit("signing_key.revoked", now=now, tenant=key.tenant, key_id=key_id)
        return key


def check_tier(tiers: Iterable[str], tier: str) -> str:
    """``tier`` if it is one of ``tiers``; else a 400 naming them."""
    if tier not in tiers:
        raise InvalidRequest(f"unknown tier {tier!r}; tiers are {', '.join(tiers)}", code="invalid_tier", param="tier")
    return tier


def tenant_not_found(name: str) -> NotFound:
    return NotFound(f"tenant {name!r} does not exist", param="tenant")


def signing_key_not_found(key_id: str) -> NotFound:
    return NotFound(f"signing key {key_id!r} does not exist", param="key_id")


def is_key_id(key_id: object) -> bool:
    return isinstance(key_id, str) and key_id.startswith("key_") and key_id[4:].isalnum()


def new_signing_key(tenant: str, now: int) -> SigningKey:
    return SigningKey(key_id="key_" + secrets.token_hex(8), tenant=tenant, secret=secrets.token_urlsafe(32), created_at=now)


def revoker(now: int) -> Callable[[SigningKey], None]:
    """The change that revokes a key at ``now`` (a key revoked already keeps its time)."""

    def revoke(key: SigningKey) -> None:
        if key.revoked_at is None:
            key.revoked_at = now

    return revoke
