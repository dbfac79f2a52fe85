"""Shared pieces of the property-based suites: a memory world, the drop-box, seeded settings.

    fuzz_settings(n)          hypothesis settings: ``n`` examples, derandomized (the same cases every run)
    world()                   a Context over a MemoryObjectStore with tenants acme and beta (+ keys)
    manifest_dict / signed / file_bytes   manifests as plain JSON data, signed like the real client
    drop(world, ...)          put input bytes and manifest bytes into the memory inbox

Every run generates the same cases (``derandomize=True``, no example database), so a
failure reproduces from the test name alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings

from dropbatch.auth.tenants import SigningKey
from dropbatch.context import Context
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore

T0 = 1_700_000_000
CHAT = "/v1/chat/completions"
MODEL = "dropbatch-tiny"
MAX_LINE_BYTES = 16 * 1024  # small, so "huge line" cases stay cheap to generate

CASES: Counter[str] = Counter()  # generated cases per test, printed in the terminal summary (conftest)


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    ctx: Context
    keys: dict[str, SigningKey]  # tenant → its signing key
    revoked: SigningKey  # a revoked key of acme


def world(**env: str) -> World:
    settings_ = Settings.from_env({"DROPBATCH_MAX_LINE_BYTES": str(MAX_LINE_BYTES), **env})
    storage = settings_.storage
    store = MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket])
    ctx = Context(settings=settings_, store=store, clock=Clock())
    keys = {}
    for tenant in ("acme", "beta"):
        ctx.tenants.create(tenant, "premium")
        keys[tenant] = ctx.tenants.create_signing_key(tenant)
    revoked = ctx.tenants.revoke_signing_key(ctx.tenants.create_signing_key("acme").key_id)
    return World(ctx=ctx, keys=keys, revoked=revoked)


def manifest_dict(
    *,
    tenant: str,
    job: str,
    key_id: str,
    inputs: list[tuple[str, bytes]],
    nonce: str,
    endpoint: str = CHAT,
    model: str = MODEL,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A manifest as plain JSON data (so hostile values need not pass the model first)."""
    return {
        "version": "dropbatch.manifest/v1",
        "tenant": tenant,
        "job": job,
        "key_id": key_id,
        "inputs": [{"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for key, data in inputs],
        "endpoint": endpoint,
        "model": model,
        "completion_window": "24h",
        "metadata": metadata or {},
        "created_at": T0,
        "nonce": nonce,
        "signature": None,
    }


def signed(manifest: dict[str, Any], secret: str) -> dict[str, Any]:
    """``manifest`` with the HMAC the real client computes over its canonical payload."""
    payload = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    digest = hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()
    return {**manifest, "signature": "hmac-sha256:" + digest}


def file_bytes(manifest: dict[str, Any]) -> bytes:
    """The one canonical file form (what ``manifests.dumps`` writes)."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def chat_line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 5},
    }


def encode_line(line: dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False).encode("utf-8")


def nonce_for(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def drop(w: World, *, manifest_key: str, manifest: bytes, inputs: list[tuple[str, bytes]]) -> None:
    for key, data in inputs:
        w.ctx.store.put(w.ctx.inbox, key, data)
    w.ctx.store.put(w.ctx.inbox, manifest_key, manifest)
