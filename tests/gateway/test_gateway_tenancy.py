"""Tenants, tokens and tiers through the live gateway: isolation, revocation, admin routes, quotas."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click.testing
import httpx
import openai
import pytest
from click.testing import CliRunner
from helpers import control_keys, make_jsonl

from dropbatch.cli import main
from dropbatch.settings import ENV_VARS
from dropbatch.storage.keys import ControlKeys

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
ADMIN = "admin-test-token-0123456789"  # conftest.ADMIN_TOKEN


def jsonl_bytes(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_isolation_matrix(settings, live, tenant_token, sdk, drain) -> None:
    a = sdk(live, tenant_token(live.ctx, "tenant-a").token)
    b = sdk(live, tenant_token(live.ctx, "tenant-b").token)
    a_file = a.files.create(file=("a.jsonl", jsonl_bytes(make_jsonl(3))), purpose="batch")
    a_batch = a.batches.create(input_file_id=a_file.id, endpoint=CHAT, completion_window="24h")
    a_running = a.batches.create(input_file_id=a_file.id, endpoint=CHAT, completion_window="24h")
    drain(live.ctx)
    a_running_id = a_running.id
    done = a.batches.retrieve(a_batch.id)
    assert done.status == "completed" and done.output_file_id
    b_file = b.files.create(file=("b.jsonl", jsonl_bytes(make_jsonl(1))), purpose="batch")

    # B, by id: every object of A is "not found".
    for call in (
        lambda: b.files.retrieve(a_file.id),
        lambda: b.files.content(a_file.id),
        lambda: b.files.retrieve(done.output_file_id),
        lambda: b.files.content(done.output_file_id),
        lambda: b.files.delete(a_file.id),
        lambda: b.batches.retrieve(a_batch.id),
        lambda: b.batches.cancel(a_running_id),
        lambda: b.batches.create(input_file_id=a_file.id, endpoint=CHAT, completion_window="24h"),
        lambda: b.batches.list(after=a_batch.id),
        lambda: b.files.list(after=a_file.id),
        lambda: b.get(f"/batches/{a_batch.id}/results", cast_to=object),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # B, by list: only B's own objects.
    assert [f.id for f in b.files.list().data] == [b_file.id]
    assert b.batches.list().data == []
    # A still has everything (the control for the matrix above).
    assert a.files.retrieve(a_file.id).id == a_file.id
    assert {x.id for x in a.batches.list().data} == {a_batch.id, a_running_id}
    assert a.files.content(done.output_file_id).content.count(b"\n") == 3


def test_revoked_token_fails_on_its_next_call(settings, live, tenant_token, sdk) -> None:
    issued = tenant_token(live.ctx, "acme")
    client = sdk(live, issued.token)
    assert client.batches.list().data == []
    admin = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    revoked = admin.delete(f"/admin/tokens/{issued.record.id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):  # this gateway caches nothing (token_cache_seconds=0)
        client.batches.list()
    admin.close()


def test_revocation_reaches_a_caching_replica_within_the_cache_time(settings, start_gateway, tenant_token, sdk) -> None:
    ttl = 0.5
    live = start_gateway(settings, token_cache_seconds=ttl)
    issued = tenant_token(live.ctx, "acme")
    client = sdk(live, issued.token)
    client.batches.list()  # now cached on this replica
    other_replica = start_gateway(settings, ctx=live.ctx, token_cache_seconds=0)
    admin = httpx.Client(base_url=other_replica.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert admin.delete(f"/admin/tokens/{issued.record.id}").status_code == 200
    admin.close()
    time.sleep(ttl + 0.1)  # wait out the cache time: the revocation must have arrived by then
    with pytest.raises(openai.AuthenticationError):
        client.batches.list()


def test_tokens_are_stored_hashed_and_expire(settings, live, tenant_token, sdk) -> None:
    issued = tenant_token(live.ctx, "acme", expires_in=3600)
    sdk(live, issued.token).files.list()
    keys = control_keys(live.ctx, "tokens/") + control_keys(live.ctx, "token-ids/")
    stored = b"".join(live.ctx.store.get(live.ctx.settings.storage.control_bucket, key)[0] for key in keys)
    assert issued.token.encode() not in stored
    assert ControlKeys.token(issued.record.token_hash) in keys

    def stored_record() -> dict:
        bucket = live.ctx.settings.storage.control_bucket
        return json.loads(live.ctx.store.get(bucket, ControlKeys.token(issued.record.token_hash))[0])

    deadline = time.monotonic() + 10
    while stored_record()["last_used"] is None and time.monotonic() < deadline:
        time.sleep(0.05)  # last_used is stamped in the background, just after the first use
    record = stored_record()
    assert record["last_used"] is not None and record["expires_at"] == record["created_at"] + 3600

    # Expiry is checked against the stored record on each lookup.
    live.ctx.store.put(
        live.ctx.settings.storage.control_bucket,
        ControlKeys.token(issued.record.token_hash),
        json.dumps({**record, "expires_at": record["created_at"]}).encode(),
    )
    with pytest.raises(openai.AuthenticationError):
        sdk(live, issued.token).files.list()


def test_admin_routes(settings, live, tenant_token, start_gateway, make_settings) -> None:
    live.ctx.tenants.create("acme", "premium")
    admin = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    created = admin.post("/admin/tokens", json={"tenant": "acme"})
    assert created.status_code == 201
    body = created.json()
    assert (body["tenant"], body["tier"]) == ("acme", "premium") and body["token"].startswith("dbt_")
    assert "token_hash" not in body
    listed = admin.get("/admin/tokens", params={"tenant": "acme"}).json()
    assert [t["id"] for t in listed["data"]] == [body["id"]]
    assert body["token"] not in json.dumps(listed)
    assert admin.post("/admin/tokens", json={"tenant": "nobody"}).status_code == 404
    assert admin.post("/admin/tokens", json={"tenant": "acme", "tier": "gold"}).status_code == 400
    assert admin.post("/admin/tokens", json={"tenant": 7}).status_code == 422
    assert admin.delete("/admin/tokens/tok_0000000000000000").status_code == 404
    assert httpx.get(live.url + "/admin/tokens", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(live.url + "/admin/tokens").status_code == 401
    assert (
        httpx.get(live.url + "/admin/tokens", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 403
    )
    admin.close()

    without_admin = start_gateway(make_settings())
    assert (
        httpx.get(without_admin.url + "/admin/tokens", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404
    )


@pytest.fixture
def cli(s3_env: str, tmp_path: Path) -> Callable[..., click.testing.Result]:
    """The `dropbatch` command against the test's moto server (other DROPBATCH_* variables cleared)."""
    names = {*ENV_VARS, *(f for spec in ENV_VARS.values() for f in spec[3])}
    env: dict[str, str | None] = dict.fromkeys(names)
    env |= {"DROPBATCH_S3_ENDPOINT": s3_env, "DROPBATCH_HOME": str(tmp_path / "home")}

    def run(*args: str) -> click.testing.Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return run


def test_token_commands(settings, live, sdk, cli) -> None:
    live.ctx.tenants.create("acme", "free")
    created = cli("token", "create", "--tenant", "acme", "--tier", "premium", "--json")
    assert created.exit_code == 0, created.stderr
    shown = json.loads(created.stdout)
    assert set(shown) >= {"id", "token", "tenant", "tier"} and (shown["tenant"], shown["tier"]) == ("acme", "premium")
    client = sdk(live, shown["token"])
    assert client.batches.list().data == []

    listed = cli("token", "list", "--tenant", "acme", "--json")
    assert listed.exit_code == 0
    assert [t["id"] for t in json.loads(listed.stdout)["data"]] == [shown["id"]]
    assert shown["token"] not in listed.stdout
    text = cli("token", "list")
    assert shown["id"] in text.stdout and shown["token"] not in text.stdout and "active" in text.stdout

    revoked = cli("token", "revoke", shown["id"], "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):
        client.batches.list()
    assert "revoked" in cli("token", "list").stdout

    missing = cli("token", "create", "--tenant", "nobody", "--json")
    assert missing.exit_code == 1 and json.loads(missing.stderr)["error"]["code"] == "not_found"


def test_hourly_quota_per_tier_fails_the_batch(make_settings, start_gateway, tenant_token, sdk, drain) -> None:
    settings = make_settings(DROPBATCH_TIER_QUOTAS="free=5,basic=8")
    live = start_gateway(settings)
    free = sdk(live, tenant_token(live.ctx, "small", tier="free").token)
    basic = sdk(live, tenant_token(live.ctx, "bigger", tier="basic").token)

    def submit(client, lines: int) -> str:
        file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(lines))), purpose="batch")
        return client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h").id

    over_free = submit(free, 6)  # 6 > 5: never fits the free tier
    fits_basic = submit(basic, 6)
    drain(live.ctx)
    failed = free.batches.retrieve(over_free)
    assert failed.status == "failed"
    assert failed.errors is not None and [e.code for e in failed.errors.data] == ["quota_exceeded"]
    assert basic.batches.retrieve(fits_basic).status == "completed"

    second = submit(basic, 6)  # 6 + 6 > 8 within the hour
    drain(live.ctx)
    refused = basic.batches.retrieve(second)
    assert refused.status == "failed"
    assert refused.errors is not None and refused.errors.data[0].code == "quota_exceeded"
    assert "would fit in" in (refused.errors.data[0].message or "")
    fits_free = submit(free, 5)
    assert free.batches.retrieve(fits_free).status == "validating"
    drain(live.ctx)
    assert free.batches.retrieve(fits_free).status == "completed"  # (list order ties within one second)
