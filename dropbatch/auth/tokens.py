"""Bearer tokens for the gateway: issued once, stored only as a hash, revocable.

    tokens/<sha256 of the token>.json   the record (id, tenant, tier, times, revoked_at)
    token-ids/<token id>.json           id → hash, so operators revoke and list by id

The secret is ``dbt_`` + 43 url-safe characters from ``secrets`` (256 bits) and is
returned exactly once, by ``Tokens.create``. A lookup reads the record at the
hash's key and compares the stored hash with ``hmac.compare_digest``, so nothing
about the secret leaks through timing. Revocation is a field on the record: the
next lookup that reaches the control bucket sees it (the gateway's cache of
lookups lives a few seconds at most, see ``gateway.auth``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from dropbatch.aiorecords import AsyncRecords
from dropbatch.auth.tenants import AsyncTenants, Tenant, TenantRegistry, check_tier
from dropbatch.errors import AuthenticationFailed, InvalidRequest, NotFound
from dropbatch.records import Clock, Records, audit
from dropbatch.storage.keys import ControlKeys, check_name

TOKEN_PREFIX = "dbt_"  # lets secret scanners recognise a leaked dropbatch token
LAST_USED_RESOLUTION = 60  # seconds: last_used is written at most once a minute per token
_TOKEN_ID_LENGTH = 16


class TokenRecord(BaseModel):
    """What the control bucket knows about a token; never the token itself."""

    id: str
    token_hash: str
    tenant: str
    tier: str
    created_at: int
    expires_at: int | None = None
    last_used: int | None = None
    revoked_at: int | None = None

    def public(self) -> dict:
        """The record as operators see it (``token list``, ``GET /admin/tokens``)."""
        return self.model_dump(exclude={"token_hash"})

    def usable(self, now: int) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class TokenIndex(BaseModel):
    id: str
    token_hash: str


@dataclass(frozen=True)
class IssuedToken:
    """A new token: ``token`` is the secret, shown to the operator once and never stored."""

    record: TokenRecord
    token: str

    def shown_once(self) -> dict:
        return {"id": self.record.id, "token": self.token, "tenant": self.record.tenant, "tier": self.record.tier}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _looks_like_token(token: str) -> bool:
    body = token[len(TOKEN_PREFIX) :]
    return token.startswith(TOKEN_PREFIX) and 16 <= len(body) <= 128 and all(c.isalnum() or c in "-_" for c in body)


def _valid_token_id(token_id: str) -> bool:
    return (
        isinstance(token_id, str)
        and token_id.startswith("tok_")
        and len(token_id) == 4 + _TOKEN_ID_LENGTH
        and all(c in "0123456789abcdef" for c in token_id[4:])
    )


def lookup_key(token: str) -> tuple[str, str] | None:
    """Where ``token``'s record would be (its key and hash), or None if it cannot be a token at all."""
    if not _looks_like_token(token):
        return None
    digest = hash_token(token)
    return ControlKeys.token(digest), digest


def matching(record: TokenRecord | None, digest: str) -> TokenRecord | None:
    """``record`` if its stored hash is ``digest`` (compared in constant time)."""
    if record is None or not hmac.compare_digest(record.token_hash.encode(), digest.encode()):
        return None
    return record


def needs_touch(record: TokenRecord, now: int) -> bool:
    return record.last_used is None or now - record.last_used >= LAST_USED_RESOLUTION


def last_used_stamp(now: int) -> Callable[[TokenRecord], None]:
    """The update that stamps ``last_used`` (a no-op if another writer stamped it this minute)."""

    def stamp(current: TokenRecord) -> None:
        if needs_touch(current, now):
            current.last_used = now

    return stamp


def new_token(owner: Tenant, tier: str, *, expires_in: int | None, now: int) -> IssuedToken:
    """A fresh token for ``owner`` at ``tier`` (already checked); nothing is stored yet."""
    if expires_in is not None and expires_in <= 0:
        raise InvalidRequest("expires_in must be a positive number of seconds.", param="expires_in")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(
        id="tok_" + secrets.token_hex(_TOKEN_ID_LENGTH // 2),
        token_hash=hash_token(token),
        tenant=owner.name,
        tier=tier,
        created_at=now,
        expires_at=now + expires_in if expires_in is not None else None,
    )
    return IssuedToken(record=record, token=token)


def token_writes(record: TokenRecord) -> list[tuple[str, TokenRecord | TokenIndex]]:
    """What issuing ``record`` creates, in order: the record first, so an id in the index always leads to one."""
    return [
        (ControlKeys.token(record.token_hash), record),
        (ControlKeys.token_id(record.id), TokenIndex(id=record.id, token_hash=record.token_hash)),
    ]


def token_not_found(token_id: str) -> NotFound:
    return NotFound(f"No token found with id '{token_id}'.", param="token_id")


def listed(record: TokenRecord, tenant: str | None) -> bool:
    """Whether a listing of ``tenant``'s tokens (everyone's if None) shows ``record``."""
    return tenant is None or record.tenant == tenant


def revoked_stamp(now: int) -> Callable[[TokenRecord], None]:
    """The update that revokes a token (a no-op if it was revoked before: revoking is idempotent)."""

    def revoke(current: TokenRecord) -> None:
        if current.revoked_at is None:
            current.revoked_at = now

    return revoke


class Tokens:
    """Issue, look up, list and revoke bearer tokens in the control bucket."""

    def __init__(self, records: Records, tenants: TenantRegistry, *, clock: Clock) -> None:
        self.records = records
        self.tenants = tenants
        self.clock = clock

    def create(self, tenant: str, *, tier: str | None = None, expires_in: int | None = None) -> IssuedToken:
        """A token for an existing ``tenant``; ``tier`` (default: the tenant's) sets its API rate limit."""
        owner = self.tenants.get(check_name(tenant, "tenant"))
        tier = self.tenants.check_tier(tier) if tier is not None else owner.tier
        now = int(self.clock())
        issued = new_token(owner, tier, expires_in=expires_in, now=now)
        for key, document in token_writes(issued.record):
            self.records.create(key, document)
        audit(self.records, "token.created", now=now, tenant=owner.name, token_id=issued.record.id, tier=tier)
        return issued

    def lookup(self, token: str) -> TokenRecord | None:
        """The record for ``token`` as stored (revoked or expired included), or None if unknown."""
        where = lookup_key(token)
        if where is None:
            return None
        key, digest = where
        return matching(self.records.get(key, TokenRecord), digest)

    def check(self, record: TokenRecord | None) -> TokenRecord:
        """``record`` if it may be used now; else ``AuthenticationFailed`` (one message for every reason)."""
        if record is None or not record.usable(int(self.clock())):
            # One answer for unknown, expired and revoked: the caller learns nothing else.
            raise AuthenticationFailed("Incorrect API key provided, or the key was revoked or has expired.")
        return record

    def authenticate(self, token: str) -> TokenRecord:
        return self.check(self.lookup(token))

    def get(self, token_id: str) -> TokenRecord:
        index = self.records.get(ControlKeys.token_id(token_id), TokenIndex) if _valid_token_id(token_id) else None
        record = self.records.get(ControlKeys.token(index.token_hash), TokenRecord) if index else None
        if record is None:
            raise token_not_found(token_id)
        return record

    def list(self, tenant: str | None = None) -> Iterator[TokenRecord]:
        """Every token (of ``tenant``, if given), oldest id first; secrets are never stored, so never listed."""
        for key in self.records.list_keys(ControlKeys.TOKEN_ID_PREFIX):
            index = self.records.get(key, TokenIndex)
            record = self.records.get(ControlKeys.token(index.token_hash), TokenRecord) if index else None
            if record is not None and listed(record, tenant):
                yield record

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke ``token_id`` (idempotent): every later lookup of it fails."""
        record = self.get(token_id)
        now = int(self.clock())
        record = self.records.update(ControlKeys.token(record.token_hash), TokenRecord, revoked_stamp(now))
        audit(self.records, "token.revoked", now=now, tenant=record.tenant, token_id=record.id)
        return record


class AsyncTokens:
    """``Tokens``' operator side awaited (the gateway's /admin/tokens): the same records and audit events."""

    def __init__(self, records: AsyncRecords, tenants: AsyncTenants, *, tiers: Iterable[str], clock: Clock) -> None:
        self.records = records
        self.tenants = tenants
        self.tiers = tuple(tiers)
        self.clock = clock

    async def create(self, tenant: str, *, tier: str | None = None, expires_in: int | None = None) -> IssuedToken:
        """``Tokens.create`` awaited."""
        owner = await self.tenants.get(check_name(tenant, "tenant"))
        tier = check_tier(self.tiers, tier) if tier is not None else owner.tier
        now = int(self.clock())
        issued = new_token(owner, tier, expires_in=expires_in, now=now)
        for key, document in token_writes(issued.record):
            await self.records.create(key, document)
        await self.records.audit("token.created", now=now, tenant=owner.name, token_id=issued.record.id, tier=tier)
        return issued

    async def get(self, token_id: str) -> TokenRecord:
        index = await self.records.get(ControlKeys.token_id(token_id), TokenIndex) if _valid_token_id(token_id) else None
        record = await self.records.get(ControlKeys.token(index.token_hash), TokenRecord) if index else None
        if record is None:
            raise token_not_found(token_id)
        return record

    async def list(self, tenant: str | None = None) -> list[TokenRecord]:
        """``Tokens.list`` awaited: one listing, then the index entries and the records each read concurrently."""
        keys = [key async for key in self.records.list_keys(ControlKeys.TOKEN_ID_PREFIX)]
        indexes = await self.records.gather(self.records.get(key, TokenIndex) for key in keys)
        hashes = [index.token_hash for index in indexes if index is not None]
        records = await self.records.gather(self.records.get(ControlKeys.token(h), TokenRecord) for h in hashes)
        return [record for record in records if record is not None and listed(record, tenant)]

    async def revoke(self, token_id: str) -> TokenRecord:
        """``Tokens.revoke`` awaited."""
        record = await self.get(token_id)
        now = int(self.clock())
        record = await self.records.update(ControlKeys.token(record.token_hash), TokenRecord, revoked_stamp(now))
        await self.records.audit("token.revoked", now=now, tenant=record.tenant, token_id=record.id)
        return record
