"""Every object key dropbatch reads or writes, in one place.

inbox    <tenant>/<job>/<name>.jsonl          client inputs (drop-box)
         <tenant>/<job>/manifest.json         arrives last; starts the job
         <tenant>/<job>/rejection.json        why a job did not run (client-readable)
         <tenant>/<any>/rejection.json        beside a manifest at a key the watcher does not admit
         <tenant>/.files/<file_id>            uploads through the gateway's /v1/files
outbox   <tenant>/<sha256>/output.jsonl       successful result lines
         <tenant>/<sha256>/errors.jsonl       failed lines
         <tenant>/<sha256>/summary.json       counts, usage; written last
control  see ``ControlKeys``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dropbatch.errors import InvalidRequest

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFEST_NAME = "manifest.json"
REJECTION_NAME = "rejection.json"
FILES_DIR = ".files"


def check_name(value: str, what: str) -> str:
    """A tenant or job name: letters, digits, ``._-``, not starting with a dot; no traversal."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        raise InvalidRequest(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code=f"invalid_{what}",
            param=what,
        )
    return value


@dataclass(frozen=True)
class JobRef:
    """A drop-box job: one ``<tenant>/<job>/`` prefix in the inbox."""

    tenant: str
    job: str

    @property
    def prefix(self) -> str:
        return f"{self.tenant}/{self.job}/"

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST_NAME

    @property
    def rejection_key(self) -> str:
        return self.prefix + REJECTION_NAME

    def __str__(self) -> str:
        return f"{self.tenant}/{self.job}"

    @classmethod
    def parse(cls, text: str) -> JobRef:
        """``TENANT/JOB`` as typed on the command line."""
        tenant, sep, job = text.strip("/").partition("/")
        if not sep:
            raise InvalidRequest(f"expected TENANT/JOB, got {text!r}", code="invalid_job")
        return cls(check_name(tenant, "tenant"), check_name(job, "job"))


def job_of_manifest_key(key: str) -> JobRef | None:
    """The job a ``<tenant>/<job>/manifest.json`` key starts, or None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or parts[2] != MANIFEST_NAME:
        return None
    if not _NAME.fullmatch(parts[0]) or not _NAME.fullmatch(parts[1]) or ".." in key:
        return None
    return JobRef(parts[0], parts[1])


MANIFEST_KEY_PATTERN = "<tenant>/<job>/manifest.json"


def is_manifest_name(key: str) -> bool:
    """Whether ``key``'s file name is a manifest's, in any letter case, at any depth."""
    return key.rsplit("/", 1)[-1].casefold() == MANIFEST_NAME


def why_not_a_manifest_key(key: str) -> str:
    """Why a manifest-named ``key`` is not ``<tenant>/<job>/manifest.json`` (the tenant part is checked apart)."""
    parts = key.split("/")
    if len(parts) != 3:
        return f"has {len(parts) - 1} folder level(s), not the 2 of <tenant>/<job>/"
    if parts[2] != MANIFEST_NAME:
        return f"names the file {parts[2]!r}, not {MANIFEST_NAME!r}"
    try:
        check_name(parts[1], "job")
    except InvalidRequest as exc:
        return f"has an invalid job name: {exc.message}"
    return "is not a job's manifest key"


def uploaded_file_key(tenant: str, file_id: str) -> str:
    return f"{tenant}/{FILES_DIR}/{file_id}.jsonl"


@dataclass(frozen=True)
class OutputPrefix:
    """Where one piece of work's results live: ``outbox/<tenant>/<sha256>/``.

    Partial results (an expired or cancelled batch) go one level down, in
    ``<sha256>/partial-<batch_id>/``, so they never stand in for the complete work.
    """

    tenant: str
    sha256: str
    partial_of: str | None = None

    @property
    def prefix(self) -> str:
        base = f"{self.tenant}/{self.sha256}/"
        return base + (f"partial-{self.partial_of}/" if self.partial_of else "")

    @property
    def output_key(self) -> str:
        return self.prefix + "output.jsonl"

    @property
    def errors_key(self) -> str:
        return self.prefix + "errors.jsonl"

    @property
    def summary_key(self) -> str:
        return self.prefix + "summary.json"


class ControlKeys:
    """Keys in the service-only control bucket."""

    @staticmethod
    def tenant(tenant: str) -> str:
        return f"tenants/{tenant}.json"

    @staticmethod
    def signing_key(key_id: str) -> str:
        return f"signing-keys/{key_id}.json"

    @staticmethod
    def nonce(tenant: str, nonce: str) -> str:
        return f"nonces/{tenant}/{nonce}"

    @staticmethod
    def batch(tenant: str, batch_id: str) -> str:
        return f"batches/{tenant}/{batch_id}.json"

    @staticmethod
    def batch_index(tenant: str, created_at: int, batch_id: str) -> str:
        # Newest first in S3's ascending key order: index by time remaining to 10^11.
        return f"index/batches/{tenant}/{10**11 - created_at:011d}_{batch_id}"

    @staticmethod
    def batch_index_prefix(tenant: str) -> str:
        return f"index/batches/{tenant}/"

    @staticmethod
    def job(ref: JobRef) -> str:
        return f"jobs/{ref.tenant}/{ref.job}.json"

    @staticmethod
    def refused_manifest(ref: JobRef, manifest_sha256: str) -> str:
        """A manifest refused without making a batch (its job had a live batch): it stays refused."""
        return f"refused/{ref.tenant}/{ref.job}/{manifest_sha256}.json"

    @staticmethod
    def refused_manifest_prefix(ref: JobRef) -> str:
        return f"refused/{ref.tenant}/{ref.job}/"

    @staticmethod
    def file(tenant: str, file_id: str) -> str:
        return f"files/{tenant}/{file_id}.json"

    @staticmethod
    def file_index(tenant: str, created_at: int, file_id: str) -> str:
        return f"index/files/{tenant}/{10**11 - created_at:011d}_{file_id}"

    @staticmethod
    def file_index_prefix(tenant: str) -> str:
        return f"index/files/{tenant}/"

    EXPIRY_PREFIX = "index/expiry/"

    @staticmethod
    def expiry(expires_at: int, tenant: str, file_id: str) -> str:
        """A file due to expire at ``expires_at``: the sweep lists these oldest first and stops at now."""
        return f"index/expiry/{expires_at:012d}/{tenant}/{file_id}.json"

    @staticmethod
    def expiry_due_at(key: str) -> int:
        return int(key.removeprefix("index/expiry/").split("/", 1)[0])

    QUEUE_PREFIX = "queue/"

    @staticmethod
    def queue_entry(deadline: int, batch_id: str) -> str:
        # Earliest deadline first is S3's ascending key order.
        return f"queue/{deadline:012d}_{batch_id}.json"

    @staticmethod
    def queue_entry_batch(key: str) -> str:
        """The batch id a ``queue_entry`` key names."""
        return key.rsplit("/", 1)[-1].split("_", 1)[-1].removesuffix(".json")

    LEASE_PREFIX = "leases/"

    @staticmethod
    def lease(batch_id: str) -> str:
        return f"leases/{batch_id}.json"

    @staticmethod
    def chunk_result(batch_id: str, chunk: int) -> str:
        return f"work/{batch_id}/chunks/{chunk:06d}.jsonl"

    @staticmethod
    def chunk_prefix(batch_id: str) -> str:
        return f"work/{batch_id}/chunks/"

    @staticmethod
    def duplicates(batch_id: str) -> str:
        """The batch's duplicate lines (chunk → dup custom_id → original custom_id), written at admission."""
        return f"work/{batch_id}/duplicates.json"

    THROUGHPUT_PREFIX = "throughput/"

    @staticmethod
    def throughput(owner: str) -> str:
        """One runner's recently measured request lines per second (for SLA-aware admission)."""
        return f"throughput/{owner}.json"

    @staticmethod
    def quota(tenant: str) -> str:
        return f"quota/{tenant}.json"

    @staticmethod
    def token(token_hash: str) -> str:
        return f"tokens/{token_hash}.json"

    TOKEN_ID_PREFIX = "token-ids/"

    @staticmethod
    def token_id(token_id: str) -> str:
        return f"token-ids/{token_id}.json"

    @staticmethod
    def gateway_key(tenant: str) -> str:
        """Which signing key the gateway signs ``tenant``'s API batches with."""
        return f"gateway-keys/{tenant}.json"

    @staticmethod
    def grant(tenant: str, grant_id: str) -> str:
        """An S3 location outside dropbatch's buckets granted to ``tenant`` (``dropbatch tenant grant``)."""
        return f"grants/{tenant}/{grant_id}.json"

    @staticmethod
    def grant_prefix(tenant: str) -> str:
        return f"grants/{tenant}/"

    @staticmethod
    def gateway_job(tenant: str, job_id: str) -> str:
        """A /start job of the compatibility API."""
        return f"gateway-jobs/{tenant}/{job_id}.json"

    @staticmethod
    def audit(timestamp: float, event_id: str) -> str:
        return f"audit/{int(timestamp):011d}_{event_id}.json"
