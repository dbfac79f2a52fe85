"""The real OpenAI SDK against a live gateway over moto: upload → batch → (watcher, runner) → results.

The runner drives the echo engine stand-in (real chunk reading and OpenAI
result shaping, a fake model); tests/e2e/test_gateway_sdk.py runs real vLLM.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import openai
import pytest
from helpers import ShiftedClock, make_jsonl, read_jsonl

from dropbatch.engine.echo import EchoEngine
from dropbatch.jsonl import is_success
from dropbatch.models import BatchStatus
from dropbatch.storage.keys import uploaded_file_key
from runner.service import PROGRESS_EVERY_SECONDS
from watcher.service import Watcher

pytestmark = pytest.mark.integration


def jsonl_bytes(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_files_create_batch_create_retrieve_and_content(settings, live, tenant_token, sdk, drain) -> None:
    token = tenant_token(live.ctx, "acme")
    client = sdk(live, token.token)
    lines = make_jsonl(10)
    data = jsonl_bytes(lines)

    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file",
        "batch",
        len(data),
        "requests.jsonl",
    )
    record = live.ctx.files.get("acme", uploaded.id)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert live.ctx.store.get(live.ctx.inbox, uploaded_file_key("acme", uploaded.id))[0] == data
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    expiring = client.files.create(
        file=("e.jsonl", data), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert expiring.expires_at == expiring.created_at + 3600

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "gateway-test"},
    )
    assert batch.status == "validating"
    assert (batch.input_file_id, batch.metadata, batch.model) == (
        uploaded.id,
        {"project": "gateway-test"},
        "dropbatch-tiny",
    )
    stored = live.ctx.batches.get("acme", batch.id)
    assert stored.source == "api" and stored.job.startswith("api-")

    drain(live.ctx)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 10, 0)
    assert done.input_file_id == uploaded.id  # the watcher kept the gateway's file id
    assert done.metadata == {"project": "gateway-test"}
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.completed_at is not None and done.in_progress_at is not None
    assert done.output_file_id is not None and done.error_file_id is None

    output = read_jsonl(client.files.content(done.output_file_id).content)
    assert Counter(line["custom_id"] for line in output) == Counter(line["custom_id"] for line in lines)
    assert all(is_success(line) for line in output)
    assert {line["response"]["body"]["object"] for line in output} == {"chat.completion"}
    output_file = client.files.retrieve(done.output_file_id)
    assert (output_file.purpose, output_file.bytes) == (
        "batch_output",
        len(client.files.content(done.output_file_id).content),
    )


def test_batches_list_pages_newest_first(settings, live, tenant_token, sdk) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(2))), purpose="batch")
    created = [
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h").id
        for _ in range(5)
    ]

    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert len(second.data) == 2 and second.has_more
    third = client.batches.list(limit=2, after=second.data[-1].id)
    assert len(third.data) == 1 and not third.has_more

    paged = [b.id for b in first.data + second.data + third.data]
    assert sorted(paged) == sorted(created)
    every = list(client.batches.list(limit=2))  # the SDK's auto-pagination follows has_more/after
    assert [b.id for b in every] == paged
    stamps = [b.created_at for b in every]
    assert stamps == sorted(stamps, reverse=True)


def test_files_list_orders_filters_and_pages(settings, make_context, start_gateway, tenant_token, sdk, drain) -> None:
    clock = ShiftedClock()
    live = start_gateway(settings, ctx=make_context(settings, clock=clock), token_cache_seconds=0)
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    uploads = []
    for i in range(3):
        uploads.append(
            client.files.create(file=(f"in-{i}.jsonl", jsonl_bytes(make_jsonl(2, prefix=f"f{i}"))), purpose="batch")
        )
        clock.offset += 10
    batch = client.batches.create(input_file_id=uploads[0].id, endpoint="/v1/chat/completions", completion_window="24h")
    drain(live.ctx)
    output_id = client.batches.retrieve(batch.id).output_file_id

    desc = client.files.list()
    assert [f.id for f in desc.data] == [output_id] + [u.id for u in reversed(uploads)]
    asc = client.files.list(order="asc", purpose="batch")
    assert [f.id for f in asc.data] == [u.id for u in uploads]
    page = client.files.list(order="asc", purpose="batch", limit=2)
    assert [f.id for f in page.data] == [uploads[0].id, uploads[1].id] and page.has_more
    rest = client.files.list(order="asc", purpose="batch", limit=2, after=uploads[1].id)
    assert [f.id for f in rest.data] == [uploads[2].id] and not rest.has_more
    assert [f.id for f in client.files.list(purpose="batch_output").data] == [output_id]

    deleted = client.files.delete(uploads[2].id)
    assert (deleted.id, deleted.deleted) == (uploads[2].id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploads[2].id)


def test_cancel_after_admission_before_the_runner(settings, live, tenant_token, sdk, drain) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    lines = make_jsonl(6)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    Watcher(live.ctx).run_once()
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert [b.status for b in client.batches.list().data] == ["in_progress"]  # the page cache holds it now

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert client.batches.cancel(batch.id).status == "cancelling"  # asking twice changes nothing
    assert [b.status for b in client.batches.list().data] == ["cancelling"]  # our own write, at once

    engine = EchoEngine(live.ctx.store, settings)
    drain(live.ctx, engine)
    assert engine.runs == []  # nothing ran: the runner settled the cancel before starting
    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert [b.status for b in client.batches.list().data] == ["cancelled"]  # what a retrieve read, pages show
    assert (done.request_counts.completed, done.request_counts.failed) == (0, len(lines))
    errors = read_jsonl(client.files.content(done.error_file_id).content)
    assert sorted(line["custom_id"] for line in errors) == sorted(line["custom_id"] for line in lines)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}


def test_cancel_while_validating(settings, live, tenant_token, sdk, drain) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(3))), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(batch.id).status == "cancelling"
    engine = EchoEngine(live.ctx.store, settings)
    drain(live.ctx, engine)
    after = client.batches.retrieve(batch.id)
    assert after.status == "cancelled" and after.in_progress_at is None
    assert engine.runs == [] and list(live.ctx.queue.entries()) == []


class CancelMidRun:
    """The echo engine stand-in that asks the gateway to cancel after the first chunk's results."""

    def __init__(self, inner: EchoEngine, cancel) -> None:
        self.inner = inner
        self.cancel = cancel
        self.runs = inner.runs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, chunks):
        for index, result in enumerate(self.inner.run(chunks)):
            yield result
            if index == 3:  # the first chunk (4 lines) is complete and checkpointed next
                self.cancel()
                # Let the runner's progress check come due, so it sees `cancelling` mid-run.
                time.sleep(PROGRESS_EVERY_SECONDS + 0.1)


def test_cancel_mid_run_keeps_finished_lines(settings, live, tenant_token, sdk, drain) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    lines = make_jsonl(12)  # 3 chunks of 4 (DROPBATCH_CHUNK_LINES=4)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    engine = CancelMidRun(EchoEngine(live.ctx.store, settings), lambda: client.batches.cancel(batch.id))
    drain(live.ctx, engine)

    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled"
    counts = done.request_counts
    assert counts.completed >= 4 and counts.failed >= 1 and counts.completed + counts.failed == len(lines)
    output = read_jsonl(client.files.content(done.output_file_id).content)
    errors = read_jsonl(client.files.content(done.error_file_id).content)
    assert Counter(line["custom_id"] for line in output + errors) == Counter(line["custom_id"] for line in lines)
    assert all(is_success(line) for line in output)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert (len(output), len(errors)) == (counts.completed, counts.failed)


def test_drop_box_batches_are_visible_through_the_api(settings, live, tenant_token, sdk, drain, drop_job) -> None:
    token = tenant_token(live.ctx, "acme")
    key = live.ctx.tenants.create_signing_key("acme")
    ref = drop_job(live.ctx, key, make_jsonl(3))
    drain(live.ctx)
    record = live.ctx.batches.for_job(ref)
    assert record.status is BatchStatus.COMPLETED

    client = sdk(live, token.token)
    seen = client.batches.retrieve(record.id)
    assert (seen.status, seen.request_counts.completed) == ("completed", 3)
    assert [b.id for b in client.batches.list().data] == [record.id]
    assert len(read_jsonl(client.files.content(seen.output_file_id).content)) == 3
    assert client.files.content(seen.input_file_id).content.count(b"\n") == 3


def test_retry_config_on_creation_reaches_the_signed_manifest_and_the_record(settings, live, tenant_token, sdk) -> None:
    """dropbatch's extension: `extra_body={"retry_config": ...}` sets the batch's retry policy."""
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    uploaded = client.files.create(file=("r.jsonl", jsonl_bytes(make_jsonl(2))), purpose="batch")
    policy = {"max_retries": 1, "retry_delay": 0.25, "backoff_factor": 3.0}
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"retry_config": policy},
    )
    record = live.ctx.batches.get("acme", batch.id)
    assert record.retry_config is not None and record.retry_config.model_dump() == policy
    manifest = json.loads(live.ctx.store.get(live.ctx.inbox, record.manifest_key)[0])
    assert manifest["retry_config"] == policy
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"retry_config": {"max_retries": 99}},
        )


def test_an_upload_larger_than_one_part_is_a_multipart_upload_with_the_same_record(live, tenant_token, sdk) -> None:
    """One part is one awaited PUT; past it the async store streams a multipart upload; a batch is made from it."""
    from dropbatch.storage.base import DEFAULT_PART_SIZE

    client = sdk(live, tenant_token(live.ctx, "acme").token)
    line = json.dumps(make_jsonl(1)[0]).encode() + b"\n"
    data = line * (DEFAULT_PART_SIZE // len(line) + 2)  # a part and a bit
    uploaded = client.files.create(file=("big.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data)
    record = live.ctx.files.get("acme", uploaded.id)
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    stored = live.ctx.store.head(live.ctx.inbox, uploaded_file_key("acme", uploaded.id))
    assert stored.size == len(data) and "-" in stored.etag.strip('"')  # assembled from parts
    assert client.files.list().data[0].id == uploaded.id  # indexed like a small upload
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (batch.status, batch.input_file_id) == ("validating", uploaded.id)
