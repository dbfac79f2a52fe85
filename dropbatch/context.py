"""The services' shared dependencies, built once from Settings at an entrypoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dropbatch.auth.grants import Grants
from dropbatch.auth.quota import Quotas
from dropbatch.auth.tenants import TenantRegistry
from dropbatch.auth.tokens import Tokens
from dropbatch.queue import WorkQueue
from dropbatch.records import BatchStore, Clock, FileStore, Records
from dropbatch.settings import Settings
from dropbatch.storage.base import ObjectStore


@dataclass
class Context:
    """Settings plus the stores every service talks to; ``clock`` is injectable for tests."""

    settings: Settings
    store: ObjectStore
    clock: Clock = time.time
    records: Records = field(init=False)
    batches: BatchStore = field(init=False)
    files: FileStore = field(init=False)
    tenants: TenantRegistry = field(init=False)
    quotas: Quotas = field(init=False)
    queue: WorkQueue = field(init=False)
    tokens: Tokens = field(init=False)
    grants: Grants = field(init=False)

    def __post_init__(self) -> None:
        self.records = Records(self.store, self.settings.storage.control_bucket)
        self.batches = BatchStore(self.records)
        self.files = FileStore(self.records, clock=self.clock)
        tiers = self.settings.limits.tier_quotas
        self.tenants = TenantRegistry(self.records, tiers=tiers, clock=self.clock)
        self.quotas = Quotas(self.records, limits=tiers, clock=self.clock)
        self.queue = WorkQueue(self.records, clock=self.clock)
        self.tokens = Tokens(self.records, self.tenants, clock=self.clock)
        self.grants = Grants(self.records, self.tenants, storage=self.settings.storage, clock=self.clock)

    @property
    def inbox(self) -> str:
        return self.settings.storage.inbox_bucket

    @property
    def outbox(self) -> str:
        return self.settings.storage.outbox_bucket

    def now(self) -> int:
        return int(self.clock())

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock = time.time) -> Context:
        """The production wiring: S3 over HTTP."""
        from dropbatch.storage.s3 import S3ObjectStore

        return cls(settings=settings, store=S3ObjectStore(settings.storage), clock=clock)
