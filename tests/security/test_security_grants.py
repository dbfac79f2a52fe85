"""Least privilege for the S3 URIs a tenant names in ``POST /start``, through the live gateway and moto.

Tenants A and B. B keeps data in its own bucket, and has grants there. A may read
its own inbox/outbox prefixes and what its grants cover, and write only under a
write grant. Everything else answers one identical 403 before any request reaches
the named bucket (the gateway's store is observed, not replaced), so A learns
nothing about what exists. Outputs are created, never overwritten, unless the
grant says so; a revoked grant stops working at once, also for a job under way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest
from helpers import read_jsonl

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.storage.s3 import make_client
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

A_BUCKET, B_BUCKET = "tenant-a-data", "tenant-b-data"
PROMPTS = [{"prompt": "secret words of a"}, {"prompt": "more words"}]
B_SECRET = b'{"prompt": "secret words of b"}\n'
STORE_METHODS = ("head", "get", "iter_bytes", "put", "upload_stream", "list", "delete", "copy")


@dataclass
class World:
    url: str
    ctx: Context
    s3: object
    a: httpx.Client
    b: httpx.Client
    a_token: str
    touched: list[tuple[str, str]]  # (store method, bucket) the gateway called

    def buckets_touched(self) -> set[str]:
        return {bucket for _, bucket in self.touched} - {self.ctx.settings.storage.control_bucket}

    def body(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def drain(self) -> None:
        Watcher(self.ctx).run_once()
        runner = Runner(self.ctx, EchoEngine(self.ctx.store, self.ctx.settings))
        while any(True for _ in self.ctx.queue.entries()):
            runner.run_once()


def _observe(stores: list[object], monkeypatch: pytest.MonkeyPatch, touched: list[tuple[str, str]]) -> None:
    """Record which bucket every call of the gateway's object stores names (and let the call through).

    Both stores: the sync one its worker threads use, and the async one its routes await
    (the observer records the call when it is made, before the request is awaited)."""
    for store in stores:
        for name in STORE_METHODS:
            original = getattr(store, name, None)
            if original is None:  # the async store has no copy
                continue

            def observed(bucket, *args, _name=name, _original=original, **kwargs):
                touched.append((_name, bucket))
                if _name == "copy":
                    touched.append((_name, args[1]))  # the destination bucket
                return _original(bucket, *args, **kwargs)

            monkeypatch.setattr(store, name, observed)


@pytest.fixture
def world(make_settings, live_gateway, monkeypatch) -> Iterator[World]:
    live = live_gateway(make_settings(), token_cache_seconds=0)
    ctx = live.ctx
    s3 = make_client("s3", ctx.settings.storage)
    for bucket in (A_BUCKET, B_BUCKET):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=A_BUCKET, Key="in/prompts.jsonl", Body="".join(json.dumps(p) + "\n" for p in PROMPTS))
    s3.put_object(Bucket=B_BUCKET, Key="in/data.jsonl", Body=B_SECRET)
    s3.put_object(Bucket=B_BUCKET, Key="out/output.jsonl", Body=b"B's results\n")
    tokens = {}
    for tenant in ("a", "b"):
        ctx.tenants.create(tenant, "premium")
        tokens[tenant] = ctx.tokens.create(tenant).token
    ctx.grants.create("b", f"s3://{B_BUCKET}/in", read=True, write=False)
    ctx.grants.create("b", f"s3://{B_BUCKET}/out", read=False, write=True)
    ctx.grants.create("a", f"s3://{A_BUCKET}/in", read=True, write=False)
    ctx.grants.create("a", f"s3://{A_BUCKET}/out", read=False, write=True)
    touched: list[tuple[str, str]] = []
    _observe([ctx.store, live.gateway.store], monkeypatch, touched)
    clients = [
        httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {t}"}, timeout=60) for t in tokens.values()
    ]
    try:
        yield World(live.url, ctx, s3, *clients, a_token=tokens["a"], touched=touched)
    finally:
        for client in clients:
            client.close()


def _refusal(world: World, body: dict) -> dict:
    world.touched.clear()
    answer = world.a.post("/start", json=body)
    assert answer.status_code == 403, (body, answer.text)
    assert world.buckets_touched() == set(), f"{body}: the gateway reached {world.buckets_touched()}"
    return answer.json()


def test_a_reads_nothing_of_b_and_cannot_tell_what_exists(world: World) -> None:
    storage = world.ctx.settings.storage
    b_upload = world.b.post("/v1/files", files={"file": ("b.jsonl", B_SECRET)}, data={"purpose": "batch"}).json()
    b_upload_key = world.ctx.files.get("b", b_upload["id"]).key
    inputs = [
        f"s3://{B_BUCKET}/in/data.jsonl",  # exists, granted to B
        f"s3://{B_BUCKET}/in/missing.jsonl",
        f"s3://{B_BUCKET}/out/output.jsonl",
        "s3://no-such-bucket-anywhere/x.jsonl",
        f"s3://{storage.control_bucket}/tenants/b.json",
        f"s3://{storage.control_bucket}/nothing-here",
        f"s3://{storage.inbox_bucket}/{b_upload_key}",
        f"s3://{storage.inbox_bucket}/b/.files/file-missing.jsonl",
        f"s3://{storage.outbox_bucket}/b/anything/output.jsonl",
        f"s3://{storage.inbox_bucket}/ab/x.jsonl",  # a prefix of A's name is not A's prefix
        f"s3://{A_BUCKET}/inx/prompts.jsonl",  # beside A's grant, not under it
        f"s3://{A_BUCKET}/out/prompts.jsonl",  # under A's write-only grant
    ]
    answers = [_refusal(world, {"input": uri, "output": f"s3://{A_BUCKET}/out/"}) for uri in inputs]
    assert all(answer == answers[0] for answer in answers), answers
    error = answers[0]["error"]
    assert (error["code"], error["type"], error["param"]) == ("location_not_granted", "permission_error", "input")
    assert "not granted" in error["message"]

    # Nothing of B's reached A: no upload, no batch, and B's objects are as they were.
    assert world.a.get("/v1/files").json()["data"] == []
    assert world.a.get("/v1/batches").json()["data"] == []
    assert world.body(B_BUCKET, "in/data.jsonl") == B_SECRET

    # The OpenAI SDK sees the same refusal as a PermissionDeniedError.
    with openai.OpenAI(base_url=world.url, api_key=world.a_token, max_retries=0) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as info:
            sdk.post("/start", body={"input": inputs[0], "output": f"s3://{A_BUCKET}/out/"}, cast_to=object)
        assert info.value.code == "location_not_granted"


def test_a_cannot_write_b_s_bucket_or_any_dropbatch_bucket(world: World) -> None:
    storage = world.ctx.settings.storage
    outputs = [
        f"s3://{B_BUCKET}/out/",  # B's write grant
        f"s3://{B_BUCKET}/out/output.jsonl",  # exists
        f"s3://{B_BUCKET}/out/new.jsonl",
        "s3://no-such-bucket-anywhere/out/",
        f"s3://{storage.outbox_bucket}/a/out/",  # A's own prefix, but outputs never go to a dropbatch bucket
        f"s3://{storage.inbox_bucket}/a/out/",
        f"s3://{storage.control_bucket}/tokens/",
        f"s3://{A_BUCKET}/in/",  # A's read-only grant
        f"s3://{A_BUCKET}/outx/",
    ]
    answers = [_refusal(world, {"input": f"s3://{A_BUCKET}/in/prompts.jsonl", "output": uri}) for uri in outputs]
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0]["error"]["param"] == "output"
    assert world.body(B_BUCKET, "out/output.jsonl") == b"B's results\n"
    assert world.a.get("/v1/batches").json()["data"] == []


def test_dot_and_empty_segments_are_malformed_not_resolved(world: World) -> None:
    for uri in (
        f"s3://{A_BUCKET}/in/../../{B_BUCKET}/in/data.jsonl",
        f"s3://{A_BUCKET}/in/../out/x.jsonl",
        f"s3://{A_BUCKET}/in//prompts.jsonl",
        f"s3://{A_BUCKET}/in/./prompts.jsonl",
        f"s3://{A_BUCKET}/in/",
    ):
        world.touched.clear()
        answer = world.a.post("/start", json={"input": uri, "output": f"s3://{A_BUCKET}/out/"})
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_s3_uri"), uri
        assert world.buckets_touched() == set()


def test_a_reads_and_writes_its_granted_prefixes_and_own_prefix(world: World) -> None:
    world.touched.clear()
    started = world.a.post(
        "/start", json={"input": f"s3://{A_BUCKET}/in/prompts.jsonl", "output": f"s3://{A_BUCKET}/out/r/"}
    )
    assert started.status_code == 200, started.text
    assert world.buckets_touched() >= {A_BUCKET}  # the observer sees the store's calls
    job = started.json()
    world.drain()
    view = world.a.get(f"/jobs/{job['id']}").json()
    assert (view["status"], view["output_ready"], view["copy_error"]) == ("completed", True, None)
    assert view["outputs"] == {"output": f"s3://{A_BUCKET}/out/r/output.jsonl"}
    output = read_jsonl(world.body(A_BUCKET, "out/r/output.jsonl"))
    assert sorted(line["custom_id"] for line in output) == ["line-1", "line-2"]

    # A's own inbox prefix (its upload) is readable without any grant.
    upload = world.a.post("/v1/files", files={"file": ("p.jsonl", b'{"prompt": "own"}\n')}, data={"purpose": "batch"})
    own = world.ctx.files.get("a", upload.json()["id"])
    again = world.a.post(
        "/start", json={"input": f"s3://{own.bucket}/{own.key}", "output": f"s3://{A_BUCKET}/out/own.jsonl"}
    )
    assert again.status_code == 200, again.text
    # B cannot follow A's job id.
    assert world.b.get(f"/jobs/{job['id']}").status_code == 404


def test_a_revoked_grant_stops_working_at_once(world: World) -> None:
    read = next(g for g in world.ctx.grants.active("a") if g.read)
    write = next(g for g in world.ctx.grants.active("a") if g.write)
    body = {"input": f"s3://{A_BUCKET}/in/prompts.jsonl", "output": f"s3://{A_BUCKET}/out/late/"}
    started = world.a.post("/start", json=body)
    assert started.status_code == 200, started.text

    world.ctx.grants.revoke("a", read.id)
    refused = _refusal(world, {**body, "output": f"s3://{A_BUCKET}/out/other/"})
    assert refused["error"]["code"] == "location_not_granted"

    # The write grant goes while the job runs: its results are not copied.
    world.ctx.grants.revoke("a", write.id)
    world.drain()
    view = world.a.get(f"/jobs/{started.json()['id']}").json()
    assert view["status"] == "completed"
    assert (view["output_ready"], view["outputs"]) == (False, {})
    assert "not granted" in view["copy_error"]
    assert "Contents" not in world.s3.list_objects_v2(Bucket=A_BUCKET, Prefix="out/late/")


def test_outputs_are_never_overwritten_without_an_overwrite_grant(world: World) -> None:
    world.s3.put_object(Bucket=A_BUCKET, Key="out/kept.jsonl", Body=b"precious\n")
    source = f"s3://{A_BUCKET}/in/prompts.jsonl"
    exists = world.a.post("/start", json={"input": source, "output": f"s3://{A_BUCKET}/out/kept.jsonl"})
    assert (exists.status_code, exists.json()["error"]["code"]) == (409, "output_exists")

    # The output appears while the job runs: the copy refuses, and keeps refusing.
    started = world.a.post("/start", json={"input": source, "output": f"s3://{A_BUCKET}/out/raced.jsonl"})
    assert started.status_code == 200, started.text
    world.s3.put_object(Bucket=A_BUCKET, Key="out/raced.jsonl", Body=b"someone else's\n")
    world.drain()
    for _ in range(2):
        view = world.a.get(f"/jobs/{started.json()['id']}").json()
        assert view["output_ready"] is False and "already exists" in view["copy_error"]
    assert world.body(A_BUCKET, "out/raced.jsonl") == b"someone else's\n"
    assert world.body(A_BUCKET, "out/kept.jsonl") == b"precious\n"

    # With an overwrite grant, the same output is accepted and replaced.
    world.ctx.grants.create("a", f"s3://{A_BUCKET}/out/kept.jsonl", read=False, write=True, overwrite=True)
    world.ctx.grants.create("a", f"s3://{A_BUCKET}/out/kept.jsonl.errors.jsonl", read=False, write=True, overwrite=True)
    replaced = world.a.post("/start", json={"input": source, "output": f"s3://{A_BUCKET}/out/kept.jsonl"})
    assert replaced.status_code == 200, replaced.text
    world.drain()
    view = world.a.get(f"/jobs/{replaced.json()['id']}").json()
    assert (view["output_ready"], view["copy_error"]) == (True, None)
    assert len(read_jsonl(world.body(A_BUCKET, "out/kept.jsonl"))) == len(PROMPTS)


def test_concurrent_reads_of_a_finished_job_copy_once_without_a_false_error(world: World) -> None:
    started = world.a.post(
        "/start", json={"input": f"s3://{A_BUCKET}/in/prompts.jsonl", "output": f"s3://{A_BUCKET}/out/twice/"}
    )
    world.drain()
    job_id = started.json()["id"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        views = list(pool.map(lambda _: world.a.get(f"/jobs/{job_id}").json(), range(4)))
    final = world.a.get(f"/jobs/{job_id}").json()
    assert (final["output_ready"], final["copy_error"]) == (True, None), views
