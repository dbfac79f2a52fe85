"""Factories for the pure unit tests: settings, an in-memory context, tenants, JSONL, drop-box jobs.

Every fixture here returns a factory (STYLE.md), so a test says what it needs
(``make_context(DROPBATCH_CHUNK_LINES=3)``) instead of inheriting a fixed world.
Nothing here touches the network, a subprocess or the process environment.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dropbatch.auth.tenants import SigningKey, Tenant
from dropbatch.context import Context
from dropbatch.settings import Settings
from dropbatch.storage.keys import JobRef
from dropbatch.storage.memory import MemoryObjectStore
from manifests import Manifest, build_manifest, dumps, sign

T0 = 1_700_000_000
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "dropbatch-tiny"


class FakeClock:
    """A settable ``time.time`` stand-in; the services only ever call it."""

    def __init__(self, start: float = T0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class DroppedJob:
    """What ``drop_job`` put in the inbox."""

    ref: JobRef
    manifest: Manifest
    manifest_bytes: bytes
    input_key: str
    input_bytes: bytes


def _env(values: dict[str, Any]) -> dict[str, str]:
    return {name: str(value) for name, value in values.items()}


@pytest.fixture
def make_clock() -> Callable[..., FakeClock]:
    """``make_clock(start=T0)`` → a FakeClock (tests never import from conftest)."""
    return FakeClock


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """``make_settings(DROPBATCH_CHUNK_LINES=3)`` → ``Settings.from_env`` on exactly that dict.

    The same signature as tests/conftest.py's (which points the settings at the moto server).
    """

    def factory(**env: Any) -> Settings:
        return Settings.from_env(_env(env))

    return factory


@pytest.fixture
def make_context(make_settings: Callable[..., Settings]) -> Callable[..., Context]:
    """A Context over a MemoryObjectStore, with a FakeClock.

    ``make_context(settings=None, *, clock=None, bootstrap=True, **env)``, the same signature
    as tests/conftest.py's: ``make_context(clock=FakeClock(...), DROPBATCH_CHUNK_LINES=2)``;
    the clock is ``ctx.clock``; ``bootstrap`` creates the three buckets (else the store is empty).
    """

    def factory(
        settings: Settings | None = None, *, clock: FakeClock | None = None, bootstrap: bool = True, **env: Any
    ) -> Context:
        settings = settings or make_settings(**env)
        storage = settings.storage
        buckets = [storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket] if bootstrap else []
        return Context(settings=settings, store=MemoryObjectStore(buckets), clock=clock or FakeClock())

    return factory


@pytest.fixture
def make_tenant() -> Callable[..., tuple[Tenant, SigningKey]]:
    """``make_tenant(ctx, "acme", "basic")`` → (tenant, its first signing key)."""

    def factory(ctx: Context, name: str = "acme", tier: str = "basic") -> tuple[Tenant, SigningKey]:
        tenant = ctx.tenants.create(name, tier)
        return tenant, ctx.tenants.create_signing_key(name)

    return factory


def request_body(endpoint: str, i: int, *, model: str, words: int, max_tokens: int | None) -> dict[str, Any]:
    text = " ".join(f"w{i}_{k}" for k in range(words))
    if endpoint == CHAT:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    elif endpoint == COMPLETIONS:
        body = {"model": model, "prompt": text}
    else:
        return {"model": model, "input": text}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


@pytest.fixture
def make_jsonl() -> Callable[..., bytes]:
    """OpenAI batch input: ``make_jsonl(5, endpoint=..., words=3)``.

    ``custom_id=lambda i: ...`` renames lines, ``body=lambda i, body: body`` reshapes a
    body, ``url`` overrides the line url, ``trailing_newline`` controls the last ``\\n``.
    """

    def factory(
        n: int,
        *,
        endpoint: str = CHAT,
        model: str = MODEL,
        words: int = 2,
        max_tokens: int | None = 5,
        custom_id: Callable[[int], str] = lambda i: f"req-{i}",
        body: Callable[[int, dict[str, Any]], dict[str, Any]] = lambda i, b: b,
        url: str | None = None,
        trailing_newline: bool = True,
    ) -> bytes:
        lines = []
        for i in range(n):
            line = {
                "custom_id": custom_id(i),
                "method": "POST",
                "url": url or endpoint,
                "body": body(i, request_body(endpoint, i, model=model, words=words, max_tokens=max_tokens)),
            }
            lines.append(json.dumps(line))
        text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
        return text.encode("utf-8")

    return factory


@pytest.fixture
def drop_job(tmp_path: Path) -> Callable[..., DroppedJob]:
    """Put an input and its signed manifest (manifests.build/sign/dumps) into the memory inbox.

    ``drop_job(ctx, "acme", "j1", data, key=signing_key)``. Knobs for rejection tests:
    ``secret`` signs with another secret, ``tamper`` rewrites the manifest file bytes,
    ``uploaded_input`` uploads other bytes than were signed for, ``at=(tenant, job)``
    uploads under another prefix, ``manifest_fields`` overrides Manifest fields
    before signing (e.g. ``nonce``, ``model``, ``metadata``).
    """
    counter = iter(range(1_000_000))

    def factory(
        ctx: Context,
        tenant: str,
        job: str,
        data: bytes,
        *,
        key: SigningKey,
        tamper: Callable[[bytes], bytes] | None = None,
        secret: str | None = None,
        uploaded_input: bytes | None = None,
        at: tuple[str, str] | None = None,
        endpoint: str = CHAT,
        model: str = MODEL,
        input_name: str = "input.jsonl",
        manifest_fields: dict[str, Any] | None = None,
    ) -> DroppedJob:
        local = tmp_path / f"drop-{next(counter)}-{input_name}"
        local.write_bytes(data)
        input_key = f"{tenant}/{job}/{input_name}"
        manifest = build_manifest(
            [local],
            tenant=tenant,
            job=job,
            key_id=key.key_id,
            endpoint=endpoint,
            model=model,
            created_at=int(ctx.clock()),
            input_keys=[input_key],
        )
        if manifest_fields:
            manifest = Manifest.model_validate({**manifest.model_dump(), **manifest_fields})
        signed = sign(manifest, secret if secret is not None else key.secret)
        manifest_bytes = dumps(signed)
        if tamper is not None:
            manifest_bytes = tamper(manifest_bytes)
        ref = JobRef(*(at or (tenant, job)))
        ctx.store.put(ctx.inbox, input_key, uploaded_input if uploaded_input is not None else data)
        ctx.store.put(ctx.inbox, ref.manifest_key, manifest_bytes)
        return DroppedJob(ref, signed, manifest_bytes, input_key, data)

    return factory
