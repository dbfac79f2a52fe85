"""Tokens and signing keys are shown once, at creation, and never returned again.

Through the gateway (admin token API, every tenant route) and the kernel's
listings: after creation, no answer holds a token, its hash, or a signing secret
(the tenant's keys or the key the gateway signs API batches with), and the token
itself is stored nowhere, only its hash. The CLI side (`token list`, `key revoke`,
`config`, `status`, `results`) is grepped in test_security_logs.py.
"""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from dropbatch.auth.tokens import hash_token
from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from gateway.app import create_app
from runner.service import Runner
from watcher.service import Watcher

ADMIN = "admin-0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _world() -> tuple[Context, TestClient]:
    settings = Settings.from_env({"DROPBATCH_ADMIN_TOKEN": ADMIN})
    storage = settings.storage
    ctx = Context(
        settings=settings,
        store=MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket]),
    )
    ctx.tenants.create("acme", "basic")
    return ctx, TestClient(create_app(settings, ctx=ctx, token_cache_seconds=0))


def test_tokens_are_shown_once_and_listed_without_secret_or_hash():
    ctx, client = _world()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = client.post("/admin/tokens", json={"tenant": "acme"}, headers=admin)
    assert created.status_code == 201
    token, token_id = created.json()["token"], created.json()["id"]
    digest = hash_token(token)
    cli_token = ctx.tokens.create("acme")  # as `dropbatch token create` does

    answers = [
        client.get("/admin/tokens", headers=admin),
        client.get("/admin/tokens", params={"tenant": "acme"}, headers=admin),
        client.delete(f"/admin/tokens/{token_id}", headers=admin),
        client.get("/admin/tokens", headers=admin),
    ]
    for answer in answers:
        assert answer.status_code == 200
        for secret in (token, digest, cli_token.token, hash_token(cli_token.token)):
            assert secret not in answer.text
    for item in answers[0].json()["data"]:
        assert set(item) >= {"id", "tenant", "tier"}
        assert not {"token", "token_hash", "secret"} & set(item)
    for record in ctx.tokens.list():
        assert "token_hash" not in record.public()
    assert "token_hash" not in ctx.tokens.get(token_id).public()

    # Stored: only the hash, never the token.
    control = ctx.settings.storage.control_bucket
    for info in ctx.store.list(control):
        data = ctx.store.get(control, info.key)[0]
        assert token.encode() not in data and cli_token.token.encode() not in data, info.key


def test_no_tenant_route_returns_a_signing_secret():
    ctx, client = _world()
    tenant_key = ctx.tenants.create_signing_key("acme")
    token = ctx.tokens.create("acme").token
    auth = {"Authorization": f"Bearer {token}"}
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "dropbatch-tiny", "messages": [{"role": "user", "content": "hi there"}]},
    }
    upload = client.post(
        "/v1/files",
        headers=auth,
        files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
        data={"purpose": "batch"},
    )
    file_id = upload.json()["id"]
    batch = client.post(
        "/v1/batches",
        headers=auth,
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    batch_id = batch.json()["id"]
    Watcher(ctx).run_once()
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    done = client.get(f"/v1/batches/{batch_id}", headers=auth).json()
    assert done["status"] == "completed"

    pointer = json.loads(ctx.store.get(ctx.settings.storage.control_bucket, "gateway-keys/acme.json")[0])
    secrets = {tenant_key.secret, ctx.tenants.signing_key(pointer["key_id"]).secret}
    answers = [upload, batch] + [
        client.get(path, headers=auth)
        for path in (
            "/v1/batches",
            f"/v1/batches/{batch_id}",
            f"/v1/batches/{batch_id}/results",
            "/v1/files",
            f"/v1/files/{file_id}",
            f"/v1/files/{file_id}/content",
            f"/v1/files/{done['output_file_id']}",
            f"/v1/files/{done['output_file_id']}/content",
            "/health",
            "/metrics",
            "/openapi.json",
        )
    ]
    answers.append(client.get("/admin/tokens", headers={"Authorization": f"Bearer {ADMIN}"}))
    for answer in answers:
        assert answer.status_code < 400, (answer.request.url, answer.text)
        for secret in secrets:
            assert secret not in answer.text, answer.request.url
    # What a client can read in the buckets: the gateway's manifest carries a signature, never the key.
    for bucket in (ctx.inbox, ctx.outbox):
        for info in ctx.store.list(bucket):
            data = ctx.store.get(bucket, info.key)[0]
            assert not any(secret.encode() in data for secret in secrets), info.key
