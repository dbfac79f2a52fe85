"""files.create's expires_after and batches.create's output_expires_after, through the real OpenAI SDK.

Time is a shifted clock (no sleeps): an expired file answers 404 at once, and the
watcher's expiry sweep then deletes its record and bytes, keeping bytes something
still needs (an upload a running batch reads, a result a cached batch shares).
"""

from __future__ import annotations

import json

import openai
import pytest
from helpers import ShiftedClock, control_keys, make_jsonl, read_jsonl

from dropbatch.errors import ObjectNotFound
from dropbatch.storage.keys import uploaded_file_key
from watcher.service import Watcher

pytestmark = pytest.mark.integration

HOUR = 3600


def jsonl_bytes(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def timed(settings, make_context, start_gateway, clock):
    return start_gateway(settings, ctx=make_context(settings, clock=clock), token_cache_seconds=0)


def exists(ctx, bucket: str, key: str) -> bool:
    try:
        ctx.store.head(bucket, key)
    except ObjectNotFound:
        return False
    return True


def test_expired_upload_answers_404_at_once_and_the_sweep_deletes_it(timed, clock, tenant_token, sdk) -> None:
    client = sdk(timed, tenant_token(timed.ctx, "acme").token)
    data = jsonl_bytes(make_jsonl(2))
    kept = client.files.create(file=("kept.jsonl", data), purpose="batch")
    expiring = client.files.create(
        file=("e.jsonl", data), purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR}
    )
    assert expiring.expires_at == expiring.created_at + HOUR and kept.expires_at is None
    key = uploaded_file_key("acme", expiring.id)

    clock.offset += HOUR - 5
    assert client.files.retrieve(expiring.id).id == expiring.id  # not yet
    Watcher(timed.ctx).sweep_expired()
    assert exists(timed.ctx, timed.ctx.inbox, key)

    clock.offset += 5
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(expiring.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(expiring.id)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id=expiring.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [f.id for f in client.files.list().data] == [kept.id]

    assert Watcher(timed.ctx).run_once() == 0
    assert not exists(timed.ctx, timed.ctx.inbox, key)
    assert control_keys(timed.ctx, f"files/acme/{expiring.id}") == []
    assert control_keys(timed.ctx, "index/expiry/") == []
    assert client.files.content(kept.id).content == data


def test_output_expires_after_dates_the_result_files_and_deletes_them(timed, clock, tenant_token, sdk, drain) -> None:
    client = sdk(timed, tenant_token(timed.ctx, "acme").token)
    lines = make_jsonl(3)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 2 * HOUR},
    )
    drain(timed.ctx)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed", done
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 2 * HOUR
    assert len(read_jsonl(client.files.content(done.output_file_id).content)) == 3
    location = timed.ctx.batches.get("acme", batch.id).result
    assert location is not None

    clock.offset += 2 * HOUR
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id is None:
            continue
        with pytest.raises(openai.NotFoundError):
            client.files.content(file_id)
    assert client.batches.retrieve(batch.id).output_file_id == done.output_file_id  # as OpenAI: the id stays
    Watcher(timed.ctx).sweep_expired()
    for key in (location.output_key, location.errors_key, location.summary_key):
        assert not exists(timed.ctx, timed.ctx.outbox, key)
    assert client.files.content(file.id).content == jsonl_bytes(lines)  # the input had no expiry


def test_a_cached_batch_keeps_shared_result_bytes(timed, clock, tenant_token, sdk, drain) -> None:
    client = sdk(timed, tenant_token(timed.ctx, "acme").token)
    # Deterministic lines (temperature 0): a batch with a sampled line is never answered from the outbox.
    file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(3, temperature=0))), purpose="batch")
    first = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": HOUR},
    )
    drain(timed.ctx)
    second = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    drain(timed.ctx)
    first, second = client.batches.retrieve(first.id), client.batches.retrieve(second.id)
    assert timed.ctx.batches.get("acme", second.id).cached
    content = client.files.content(second.output_file_id).content

    clock.offset += HOUR
    Watcher(timed.ctx).sweep_expired()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first.output_file_id)
    assert client.files.content(second.output_file_id).content == content
    assert control_keys(timed.ctx, "index/expiry/") != []  # tried again at the next sweep

    client.files.delete(second.output_file_id)
    Watcher(timed.ctx).sweep_expired()
    assert control_keys(timed.ctx, "index/expiry/") == []


def test_an_expired_upload_a_running_batch_reads_keeps_its_bytes_until_it_finishes(
    timed, clock, tenant_token, sdk, drain
) -> None:
    client = sdk(timed, tenant_token(timed.ctx, "acme").token)
    data = jsonl_bytes(make_jsonl(4))
    file = client.files.create(
        file=("in.jsonl", data), purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR}
    )
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    key = uploaded_file_key("acme", file.id)
    clock.offset += HOUR
    Watcher(timed.ctx).sweep_expired()  # the batch is still validating
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)
    assert exists(timed.ctx, timed.ctx.inbox, key)

    drain(timed.ctx)
    assert client.batches.retrieve(batch.id).status == "completed"
    Watcher(timed.ctx).sweep_expired()
    assert not exists(timed.ctx, timed.ctx.inbox, key)


def test_a_deleted_file_loses_its_bytes_once_nothing_reads_them(timed, tenant_token, sdk, drain) -> None:
    client = sdk(timed, tenant_token(timed.ctx, "acme").token)
    file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(3))), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    key = uploaded_file_key("acme", file.id)
    client.files.delete(file.id)
    Watcher(timed.ctx).sweep_expired()  # the batch still has to read it
    assert exists(timed.ctx, timed.ctx.inbox, key)

    drain(timed.ctx)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.error_file_id is None, done
    Watcher(timed.ctx).sweep_expired()
    assert not exists(timed.ctx, timed.ctx.inbox, key)

    location = timed.ctx.batches.get("acme", batch.id).result
    client.files.delete(done.output_file_id)
    Watcher(timed.ctx).sweep_expired()
    for key in (location.output_key, location.errors_key, location.summary_key):
        assert not exists(timed.ctx, timed.ctx.outbox, key)
    assert control_keys(timed.ctx, "index/expiry/") == []


@pytest.mark.parametrize(
    "policy",
    [
        {"anchor": "created_at", "seconds": 60},
        {"anchor": "created_at", "seconds": 2_592_001},
        {"anchor": "now", "seconds": HOUR},
    ],
)
def test_expiry_outside_openais_bounds_is_refused(live, tenant_token, sdk, policy) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    data = jsonl_bytes(make_jsonl(1))
    with pytest.raises(openai.UnprocessableEntityError) as upload:
        client.files.create(file=("in.jsonl", data), purpose="batch", expires_after=policy)
    assert upload.value.body["param"] == "expires_after"
    file = client.files.create(file=("in.jsonl", data), purpose="batch")
    with pytest.raises(openai.APIStatusError) as create:
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", output_expires_after=policy
        )
    assert create.value.status_code in (400, 422) and "output_expires_after" in str(create.value.body)
