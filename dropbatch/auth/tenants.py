"""Tenants and their manifest signing keys, kept in the control bucket.

A signing key's secret must be readable by the watcher to check an HMAC, so unlike
bearer tokens it cannot be stored as a hash; it lives only in the service-only
control bucket (encrypted at rest by the bucket) and is shown to the client once.
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel

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
        if tier not in self.tiers:
            raise InvalidRequest(
                f"unknown tier {tier!r}; tiers are {', '.join(self.tiers)}", code="invalid_tier", param="tier"
            )
        return tier

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
            raise NotFound(f"tenant {name!r} does not exist", param="tenant")
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
        key = SigningKey(
            key_id="key_" + secrets.token_hex(8),
            tenant=tenant,
            secret=secrets.token_urlsafe(32),
            created_at=int(self.clock()),
        )
        self.records.create(ControlKeys.signing_key(key.key_id), key)
        audit(self.records, "signing_key.created", now=self.clock(), tenant=tenant, key_id=key.key_id)
        return key

    def signing_key(self, key_id: str) -> SigningKey:
        key = None
        if isinstance(key_id, str) and key_id.startswith("key_") and key_id[4:].isalnum():
            key = self.records.get(ControlKeys.signing_key(key_id), SigningKey)
        if key is None:
            raise NotFound(f"signing key {key_id!r} does not exist", param="key_id")
        return key

    def revoke_signing_key(self, key_id: str) -> SigningKey:
        now = int(self.clock())

        def revoke(key: SigningKey) -> None:
            if key.revoked_at is None:
                key.revoked_at = now

        self.signing_key(key_id)
        key = self.records.update(ControlKeys.signing_key(key_id), SigningKey, revoke)
        audit(self.records, "signing_key.revoked", now=now, tenant=key.tenant, key_id=key_id)
        return key
