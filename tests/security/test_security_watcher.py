"""The watcher against a hostile drop-box, over the moto server and the real `aws` CLI.

- an input far larger than its manifest declares is not read (HEAD first, then a
  ranged read that stops one byte past the declared size);
- a second manifest for a job whose batch is live is refused and makes no batch;
  the live batch stays what `dropbatch status` shows and runs to the end;
- a manifest at a key the watcher does not admit gets ``<its name>.rejection.json``
  beside it when the prefix is a real tenant's (never the job's ``rejection.json``),
  and nothing at all otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import CHAT, MODEL, audit_events, control_keys, make_jsonl, make_tenant, write_jsonl

from dropbatch.cli import main
from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import ObjectNotFound
from dropbatch.models import BatchStatus
from dropbatch.settings import ENV_VARS
from dropbatch.storage.keys import JobRef
from dropbatch.storage.s3 import S3ObjectStore
from manifests import build_manifest, dumps, sign
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


class ReadCounter:
    """The real S3 store, counting the bytes read of one key; ``after_head`` runs once after its HEAD."""

    def __init__(self, store: S3ObjectStore, key: str, after_head: Callable[[], None] | None = None) -> None:
        self.store = store
        self.key = key
        self.after_head = after_head
        self.read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def head(self, bucket: str, key: str):
        info = self.store.head(bucket, key)
        if key == self.key and self.after_head is not None:
            hook, self.after_head = self.after_head, None
            hook()
        return info

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        data, etag = self.store.get(bucket, key)
        if key == self.key:
            self.read += len(data)
        return data, etag

    def iter_bytes(self, bucket: str, key: str, **kwargs: Any) -> Iterator[bytes]:
        for chunk in self.store.iter_bytes(bucket, key, **kwargs):
            if key == self.key:
                self.read += len(chunk)
            yield chunk


def counting_context(settings, key: str, after_head: Callable[[], None] | None = None) -> tuple[Context, ReadCounter]:
    store = ReadCounter(S3ObjectStore(settings.storage), key, after_head)
    return Context(settings=settings, store=store), store


def signed_manifest(ctx: Context, signing_key, files: list[Path], *, job: str, input_keys: list[str]) -> bytes:
    manifest = build_manifest(
        files, tenant=signing_key.tenant, job=job, key_id=signing_key.key_id, endpoint=CHAT, model=MODEL,
        created_at=ctx.now(), input_keys=input_keys,
    )
    return dumps(sign(manifest, signing_key.secret))


def upload_job(ctx, aws, signing_key, tmp_path: Path, lines: list[dict], *, job: str, name: str) -> bytes:
    """Upload ``lines`` as ``<tenant>/<job>/<name>`` and a manifest for it (last); returns the manifest bytes."""
    source = write_jsonl(tmp_path / f"{job}-{name}", lines)
    key = f"{signing_key.tenant}/{job}/{name}"
    aws.upload(source, ctx.inbox, key)
    data = signed_manifest(ctx, signing_key, [source], job=job, input_keys=[key])
    put_manifest(ctx, aws, tmp_path, f"{signing_key.tenant}/{job}/manifest.json", data)
    return data


def put_manifest(ctx, aws, tmp_path: Path, key: str, data: bytes) -> None:
    path = tmp_path / f"manifest-{len(list(tmp_path.iterdir()))}.json"
    path.write_bytes(data)
    aws.upload(path, ctx.inbox, key)


def status(s3_env: str, tmp_path: Path, ref: JobRef) -> dict[str, Any]:
    """`dropbatch status TENANT/JOB --json`, the command a client runs."""
    names = {"DROPBATCH_SIGNING_SECRET", *ENV_VARS, *(f for spec in ENV_VARS.values() for f in spec[3])}
    env: dict[str, str | None] = dict.fromkeys(names)
    env |= {
        "DROPBATCH_S3_ENDPOINT": s3_env, "DROPBATCH_REGION": "us-east-1", "DROPBATCH_ACCESS_KEY_ID": "test",
        "DROPBATCH_SECRET_ACCESS_KEY": "test", "DROPBATCH_HOME": str(tmp_path / "cli-home"),
    }
    result = CliRunner().invoke(main, ["status", str(ref), "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def rejection(ctx, aws, key: str) -> dict[str, Any]:
    return json.loads(aws.read(ctx.inbox, key))


# -- 1. inputs larger than declared ------------------------------------------------


def test_input_far_larger_than_declared_is_refused_without_reading_it(make_context, drop_job, aws, tmp_path):
    settings = make_context().settings  # buckets created
    ref = JobRef("acme", "job-1")
    input_key = f"{ref.prefix}input.jsonl"
    ctx, counter = counting_context(settings, input_key)
    _, signing_key = make_tenant(ctx, "acme")
    small = tmp_path / "five.jsonl"
    small.write_bytes(b"{}\n{}")  # 5 bytes: what the manifest signs and declares
    assert drop_job(ctx, signing_key, small) == ref
    big = tmp_path / "big.jsonl"
    with big.open("wb") as f:  # 50 MiB replaces it after signing
        for _ in range(50):
            f.write(b"x" * (MiB - 1) + b"\n")
    aws.upload(big, ctx.inbox, input_key)
    assert ctx.store.head(ctx.inbox, input_key).size == 50 * MiB

    Watcher(ctx).run_once()

    body = rejection(ctx, aws, ref.rejection_key)
    assert body["code"] == "input_mismatch"
    assert f"is {50 * MiB} bytes but the manifest declares 5" in body["reason"]
    assert counter.read == 0  # the HEAD's size was enough: not one byte of the 50 MiB streamed
    assert ctx.batches.for_job(ref).status is BatchStatus.FAILED
    assert list(ctx.queue.entries()) == []


def test_input_that_grows_after_the_head_is_cut_one_byte_past_the_declared_size(make_context, drop_job, aws, tmp_path):
    settings = make_context().settings  # buckets created
    ref = JobRef("acme", "job-1")
    input_key = f"{ref.prefix}input.jsonl"
    lines = make_jsonl(3)
    grown = tmp_path / "grown.jsonl"

    def replace_input() -> None:  # between the watcher's HEAD and its GET, as a racing client could
        aws.upload(grown, settings.storage.inbox_bucket, input_key)

    ctx, counter = counting_context(settings, input_key, after_head=replace_input)
    _, signing_key = make_tenant(ctx, "acme")
    assert drop_job(ctx, signing_key, lines) == ref
    declared = counter.store.head(ctx.inbox, input_key).size  # past the counter: its hook is for the watcher
    original = aws.read(ctx.inbox, input_key)
    grown.write_bytes(original + b"\n" * (8 * MiB))  # same first bytes, then 8 MiB more

    Watcher(ctx).run_once()

    body = rejection(ctx, aws, ref.rejection_key)
    assert body["code"] == "input_mismatch"
    assert f"more than the {declared} bytes the manifest declares" in body["reason"]
    assert counter.read == declared + 1  # the ranged read stopped one byte past what was signed
    assert ctx.store.head(ctx.inbox, input_key).size == declared + 8 * MiB  # it really had grown
    assert list(ctx.queue.entries()) == []


# -- 2. a second manifest while the job's batch is live ------------------------------


def test_second_manifest_for_a_live_job_is_refused_and_the_first_runs_to_the_end(
    make_settings, make_context, aws, s3_env, tmp_path
):
    ctx = make_context(make_settings())
    _, signing_key = make_tenant(ctx, "acme")
    ref = JobRef("acme", "job-1")
    upload_job(ctx, aws, signing_key, tmp_path, make_jsonl(5), job="job-1", name="first.jsonl")
    Watcher(ctx).run_once()
    first = ctx.batches.for_job(ref)
    assert first.status is BatchStatus.IN_PROGRESS

    second = upload_job(
        ctx, aws, signing_key, tmp_path, make_jsonl(7, prefix="second"), job="job-1", name="second.jsonl"
    )
    Watcher(ctx).run_once()

    body = rejection(ctx, aws, ref.rejection_key)
    assert body["code"] == "job_in_progress"
    assert (body["batch_id"], body["live_batch_id"]) == (None, first.id)
    assert first.id in body["reason"] and "in_progress" in body["reason"]
    assert control_keys(ctx, "batches/acme/") == [f"batches/acme/{first.id}.json"]  # no second batch
    shown = status(s3_env, tmp_path, ref)
    assert (shown["id"], shown["status"]) == (first.id, "in_progress")
    assert len(shown["refused_manifests"]) == 1
    assert [e["live_batch_id"] for e in audit_events(ctx, "manifest.refused")] == [first.id]

    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert sum(engine.runs) == 5  # the first batch's lines, none of the refused one's
    assert status(s3_env, tmp_path, ref)["status"] == "completed"

    # The refused manifest stays refused, even uploaded again after the live batch ended...
    put_manifest(ctx, aws, tmp_path, ref.manifest_key, second)
    Watcher(ctx).run_once()
    assert control_keys(ctx, "batches/acme/") == [f"batches/acme/{first.id}.json"]
    # ...while a newly signed one for the ended job makes a new batch, which status then shows.
    upload_job(ctx, aws, signing_key, tmp_path, make_jsonl(2, prefix="third"), job="job-1", name="third.jsonl")
    Watcher(ctx).run_once()
    newest = status(s3_env, tmp_path, ref)
    assert newest["id"] != first.id and newest["status"] == "in_progress"
    assert newest["refused_manifests"] == []
    assert len(control_keys(ctx, "batches/acme/")) == 2
    with pytest.raises(ObjectNotFound):
        ctx.store.head(ctx.inbox, ref.rejection_key)  # the stale refusal no longer describes the job


# -- 3. manifests at keys the watcher does not admit ----------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("acme/job-1/Manifest.json", "names the file 'Manifest.json'"),
        ("acme/a/b/manifest.json", "has 3 folder level(s)"),
        ("acme/jöb/manifest.json", "has an invalid job name"),
        ("acme/.hidden/manifest.json", "has an invalid job name"),
        ("acme/manifest.json", "has 1 folder level(s)"),
    ],
)
def test_manifest_at_a_key_the_watcher_does_not_admit_gets_a_rejection(key, why, make_settings, make_context, aws, tmp_path):
    ctx = make_context(make_settings())
    _, signing_key = make_tenant(ctx, "acme")
    source = write_jsonl(tmp_path / "input.jsonl", make_jsonl(2))
    aws.upload(source, ctx.inbox, "acme/job-1/input.jsonl")
    put_manifest(
        ctx, aws, tmp_path, key,
        signed_manifest(ctx, signing_key, [source], job="job-1", input_keys=["acme/job-1/input.jsonl"]),
    )
    watcher = Watcher(ctx)

    assert watcher.run_once() == 1
    rejection_key = key + ".rejection.json"  # never the folder's rejection.json: acme/job-1's is the job's
    body = rejection(ctx, aws, rejection_key)
    assert body["code"] == "manifest_key_invalid"
    assert (body["tenant"], body["manifest_key"], body["accepted_pattern"]) == (
        "acme", key, "<tenant>/<job>/manifest.json"
    )
    assert why in body["reason"]
    assert control_keys(ctx, "batches/") == [] and list(ctx.queue.entries()) == []

    # Our own rejection.json is not work: nothing new on the next passes, from this or another replica.
    assert watcher.run_once() == 0
    assert Watcher(ctx).run_once() == 1  # a fresh replica looks once, and leaves the rejection as it was
    assert len(audit_events(ctx, "manifest.rejected")) == 1
    assert sorted(info.key for info in ctx.store.list(ctx.inbox)) == sorted(
        {"acme/job-1/input.jsonl", key, rejection_key}
    )


def test_a_misnamed_manifest_in_a_rejected_job_s_folder_leaves_the_job_s_rejection_as_it_was(
    make_context, drop_job, aws, tmp_path
):
    ctx = make_context()
    _, signing_key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, signing_key, make_jsonl(2), secret="not-the-tenant-s-secret")
    Watcher(ctx).run_once()
    job_rejection = rejection(ctx, aws, ref.rejection_key)
    assert job_rejection["code"] == "bad_signature"

    put_manifest(ctx, aws, tmp_path, f"{ref.prefix}Manifest.json", b"{}")
    Watcher(ctx).run_once()

    assert rejection(ctx, aws, ref.rejection_key) == job_rejection  # what `dropbatch status` points to
    assert rejection(ctx, aws, f"{ref.prefix}Manifest.json.rejection.json")["code"] == "manifest_key_invalid"


def test_manifest_under_an_unknown_tenant_prefix_gets_nothing_written(make_settings, make_context, aws, tmp_path):
    ctx = make_context(make_settings())
    make_tenant(ctx, "acme")
    keys = ["ghost/job-1/Manifest.json", "ghost/a/b/manifest.json", "ghöst/job/manifest.json", "manifest.json"]
    for key in keys:
        put_manifest(ctx, aws, tmp_path, key, b"{}")
    before = sorted(info.key for info in ctx.store.list(ctx.inbox))

    Watcher(ctx).run_once()

    assert sorted(info.key for info in ctx.store.list(ctx.inbox)) == before == sorted(keys)
    assert control_keys(ctx, "batches/") == [] and audit_events(ctx, "manifest.rejected") == []
