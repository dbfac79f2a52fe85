"""Grants: the S3 locations outside dropbatch's buckets a tenant may name, kept in the control bucket.

    grants/<tenant>/<grant id>.json   tenant, bucket, prefix, read / write / overwrite, times

A tenant names S3 URIs in ``POST /start``. It may read its own prefixes of the
inbox and outbox (``<tenant>/…``) and whatever a read grant covers; it may write
only where a write grant covers, and never into a dropbatch bucket. Everything
else is refused with one answer (``LocationNotGranted``), decided from the URI and
the grants alone, before any request reaches the named location, so the answer
says nothing about whether a bucket or an object exists there.

Matching is by path segment: a grant on ``s3://b/a/b`` covers ``a/b`` and
``a/b/…``, never ``a/bc``. URIs with empty, ``.`` or ``..`` segments are refused
as malformed, so no spelling of a key reaches outside what was granted.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from dropbatch.aiorecords import AsyncRecords
from dropbatch.auth.tenants import TenantRegistry
from dropbatch.errors import InvalidRequest, LocationNotGranted, NotFound
from dropbatch.records import Clock, Records, audit
from dropbatch.settings import StorageSettings
from dropbatch.storage.keys import ControlKeys, check_name

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_KEY_CHARS = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no spaces: what the API's S3Uri admits
_GRANT_ID = re.compile(r"^grant_[0-9a-f]{16}$")
NOT_GRANTED = (
    "This location is not granted to you. Your own prefixes of the dropbatch buckets are yours; "
    "anything else needs a grant from an operator (`dropbatch tenant grant`)."
)


@dataclass(frozen=True)
class S3Location:
    """A normalised ``s3://bucket/key``; ``key`` may end in ``/`` (a prefix) or be empty (a whole bucket)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    @classmethod
    def parse(cls, uri: str, *, param: str, object_key: bool = False) -> S3Location:
        """``uri`` checked segment by segment; ``object_key`` demands a key naming one object.

        Raises ``InvalidRequest`` for anything malformed: a bad bucket name, an empty,
        ``.`` or ``..`` segment, a backslash, non-printable characters.
        """
        bucket, _, key = uri.removeprefix("s3://").partition("/") if isinstance(uri, str) else ("", "", "")
        segments = key.split("/")
        if key.endswith("/") or key == "":
            segments = segments[:-1]  # the empty name after a trailing slash (or of an empty key)
        well_formed = (
            isinstance(uri, str)
            and uri.startswith("s3://")
            and bool(_BUCKET.fullmatch(bucket))
            and ".." not in bucket
            and len(key) <= 1024
            and bool(_KEY_CHARS.fullmatch(key))
            and "\\" not in key
            and all(segment not in ("", ".", "..") for segment in segments)
            and (not object_key or (key != "" and not key.endswith("/")))
        )
        if not well_formed:
            what = "an object (s3://bucket/key)" if object_key else "a location (s3://bucket/prefix)"
            raise InvalidRequest(
                f"'{param}' must name {what}: a valid bucket name, then '/'-separated key segments "
                "of printable ASCII, none empty, '.' or '..'.",
                code="invalid_s3_uri",
                param=param,
            )
        return cls(bucket, key)

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key + name)


class Grant(BaseModel):
    """One location granted to one tenant. ``prefix`` has no trailing slash; empty is the whole bucket."""

    id: str
    tenant: str
    bucket: str
    prefix: str
    read: bool
    write: bool
    overwrite: bool = False
    created_at: int
    revoked_at: int | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def covers(self, location: S3Location) -> bool:
        """True if ``location`` is this grant's prefix or lies below it, segment by segment."""
        if location.bucket != self.bucket:
            return False
        return self.prefix == "" or location.key == self.prefix or location.key.startswith(self.prefix + "/")

    def public(self) -> dict:
        return self.model_dump() | {"uri": self.uri}


class Grants:
    """Create, list and revoke grants (the operator's CLI); ``AsyncGrants`` decides what a tenant may read and write."""

    def __init__(self, records: Records, tenants: TenantRegistry, *, storage: StorageSettings, clock: Clock) -> None:
        self.records = records
        self.tenants = tenants
        self.clock = clock
        self.dropbatch_buckets = frozenset((storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket))

    def create(self, tenant: str, uri: str, *, read: bool, write: bool, overwrite: bool = False) -> Grant:
        """Grant ``tenant`` read and/or write (``overwrite``: replace existing objects) under ``uri``."""
        self.tenants.get(check_name(tenant, "tenant"))
        location = S3Location.parse(uri, param="uri")
        if not (read or write):
            raise InvalidRequest("A grant gives --read, --write or both.", code="invalid_grant", param="read")
        if overwrite and not write:
            raise InvalidRequest("--overwrite needs --write.", code="invalid_grant", param="overwrite")
        if location.bucket in self.dropbatch_buckets:
            raise InvalidRequest(
                f"s3://{location.bucket}/ is a dropbatch bucket: tenants reach only their own prefixes there, "
                "and no grant can change that.",
                code="invalid_grant",
                param="uri",
            )
        grant = Grant(
            id="grant_" + secrets.token_hex(8),
            tenant=tenant,
            bucket=location.bucket,
            prefix=location.key.rstrip("/"),
            read=read,
            write=write,
            overwrite=overwrite,
            created_at=int(self.clock()),
        )
        self.records.create(ControlKeys.grant(tenant, grant.id), grant)
        audit(
            self.records,
            "grant.created",
            now=self.clock(),
            tenant=tenant,
            grant_id=grant.id,
            uri=grant.uri,
            read=read,
            write=write,
            overwrite=overwrite,
        )
        return grant

    def list(self, tenant: str) -> Iterator[Grant]:
        """Every grant of ``tenant``, revoked ones included, in id order."""
        for key in self.records.list_keys(ControlKeys.grant_prefix(check_name(tenant, "tenant"))):
            grant = self.records.get(key, Grant)
            if grant is not None:
                yield grant

    def active(self, tenant: str) -> list[Grant]:
        return [grant for grant in self.list(tenant) if grant.revoked_at is None]

    def revoke(self, tenant: str, grant_id: str) -> Grant:
        """Revoke ``grant_id`` of ``tenant`` (idempotent): from now on it covers nothing."""
        check_name(tenant, "tenant")
        key = ControlKeys.grant(tenant, grant_id)
        if not (isinstance(grant_id, str) and _GRANT_ID.fullmatch(grant_id)) or self.records.get(key, Grant) is None:
            raise NotFound(f"Tenant {tenant!r} has no grant with id '{grant_id}'.", param="grant_id")
        now = int(self.clock())

        def revoke(grant: Grant) -> None:
            if grant.revoked_at is None:
                grant.revoked_at = now

        grant = self.records.update(key, Grant, revoke)
        audit(self.records, "grant.revoked", now=now, tenant=tenant, grant_id=grant_id, uri=grant.uri)
        return grant


class AsyncGrants:
    """What a tenant may read and write, decided over ``Grants``' records (the gateway's ``/start`` and ``/jobs``)."""

    def __init__(self, records: AsyncRecords, *, storage: StorageSettings) -> None:
        self.records = records
        self.own_buckets = (storage.inbox_bucket, storage.outbox_bucket)
        self.dropbatch_buckets = frozenset((*self.own_buckets, storage.control_bucket))

    async def active(self, tenant: str) -> list[Grant]:
        """``Grants.active`` awaited: the tenant's unrevoked grants in id order, read concurrently."""
        prefix = ControlKeys.grant_prefix(check_name(tenant, "tenant"))
        keys = [key async for key in self.records.list_keys(prefix)]
        grants = await self.records.gather(self.records.get(key, Grant) for key in keys)
        return [grant for grant in grants if grant is not None and grant.revoked_at is None]

    async def check_read(self, tenant: str, location: S3Location, *, param: str) -> None:
        """Pass if ``tenant`` may read ``location``: its own inbox/outbox prefix, or a read grant."""
        if location.bucket in self.own_buckets and location.key.startswith(f"{tenant}/"):
            return
        covering(await self.active(tenant), [location], self.dropbatch_buckets, param=param, write=False)

    async def check_write(self, tenant: str, locations: Iterable[S3Location], *, param: str) -> bool:
        """Pass if write grants cover every one of ``locations``; True if they also allow overwriting them all."""
        chosen = covering(await self.active(tenant), list(locations), self.dropbatch_buckets, param=param, write=True)
        return all(grant.overwrite for grant in chosen)


def covering(
    active: list[Grant], locations: list[S3Location], dropbatch_buckets: frozenset[str], *, param: str, write: bool
) -> list[Grant]:
    """For each location the active grant that covers it (one that overwrites, if any); else ``LocationNotGranted``."""
    grants = [g for g in active if (g.write if write else g.read)]
    chosen = []
    for location in locations:
        # A grant on a dropbatch bucket is refused when created; one written some other way counts for nothing.
        found = [g for g in grants if g.covers(location) and g.bucket not in dropbatch_buckets]
        if not found:
            raise LocationNotGranted(NOT_GRANTED, param=param)
        chosen.append(max(found, key=lambda g: g.overwrite))
    return chosen
