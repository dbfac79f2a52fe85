"""The drop-box on the real engine: `aws s3 cp` in, Ray Data into the warm vLLM engine, outbox out.

All scenarios are uploaded first and drained together, so they share one generate
pass and one embed pass of the engine.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from dropbatch.models import BatchStatus
from dropbatch.storage.keys import JobRef
from manifests import build_manifest, dumps, sign

pytestmark = pytest.mark.e2e

TENANT = "e2e-acme"
MODEL = "dropbatch-tiny"


def chat_lines(n: int, *, overlong: set[int] = frozenset()) -> list[dict]:
    lines = []
    for i in range(n):
        text = ("tell me a very long story " * 200) if i in overlong else f"Write a haiku about the number {i}."
        lines.append(
            {
                "custom_id": f"chat-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}],
                    "max_tokens": 24,
                    "temperature": 0,
                },
            }
        )
    return lines


def completion_lines(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"cmpl-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": f"Once upon a time, {i}", "max_tokens": 12, "temperature": 0},
        }
        for i in range(n)
    ]


def embedding_lines(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"emb-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": [f"first {i}", f"second {i}"] if i % 2 else f"only {i}"},
        }
        for i in range(n)
    ]


def drop(stack, tmp: Path, key, job: str, endpoint: str, lines: list[dict]) -> JobRef:
    """What a client does: `aws s3 cp` the JSONL first, then the signed manifest last."""
    folder = tmp / job
    folder.mkdir()
    data = folder / "input.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    manifest = build_manifest(
        [data], tenant=TENANT, job=job, key_id=key.key_id, endpoint=endpoint, model=MODEL, created_at=int(time.time())
    )
    (folder / "manifest.json").write_bytes(dumps(sign(manifest, key.secret)))
    inbox = stack.settings.storage.inbox_bucket
    stack.aws("s3", "cp", str(data), f"s3://{inbox}/{TENANT}/{job}/input.jsonl")
    stack.aws("s3", "cp", str(folder / "manifest.json"), f"s3://{inbox}/{TENANT}/{job}/manifest.json")
    return JobRef(TENANT, job)


def results(stack, ref: JobRef) -> tuple[list[dict], list[dict]]:
    """Output and error lines, read back with the AWS CLI from the outbox."""
    record = stack.ctx.batches.for_job(ref)
    bucket = record.result.bucket
    out = stack.aws("s3", "cp", f"s3://{bucket}/{record.result.output_key}", "-").stdout
    err = stack.aws("s3", "cp", f"s3://{bucket}/{record.result.errors_key}", "-").stdout
    return [json.loads(x) for x in out.splitlines()], [json.loads(x) for x in err.splitlines()]


@pytest.fixture(scope="module")
def dropped(stack, tmp_path_factory):
    """Upload every scenario, then drain once: one generate and one embed engine pass."""
    tmp = tmp_path_factory.mktemp("dropbox")
    stack.ctx.tenants.create(TENANT, "enterprise")
    key = stack.ctx.tenants.create_signing_key(TENANT)
    jobs = {
        "chat": (drop(stack, tmp, key, "chat-200", "/v1/chat/completions", chat_lines(200, overlong={17})), 200),
        "completions": (drop(stack, tmp, key, "completions-20", "/v1/completions", completion_lines(20)), 20),
        "embeddings": (drop(stack, tmp, key, "embeddings-10", "/v1/embeddings", embedding_lines(10)), 10),
    }
    passes_before = stack.engine.passes
    stack.drain()
    return {"jobs": jobs, "key": key, "tmp": tmp, "passes": stack.engine.passes - passes_before}


def test_everything_shares_two_engine_passes(dropped):
    # chat + completions are one "generate" pipeline; embeddings are one "embed" pipeline.
    assert dropped["passes"] == 2


def test_chat_batch_of_200_completes_with_one_error_line_for_the_overlong_prompt(stack, dropped):
    ref, n = dropped["jobs"]["chat"]
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert record.request_counts.total == n
    assert (record.request_counts.completed, record.request_counts.failed) == (n - 1, 1)
    out, err = results(stack, ref)
    ids = [line["custom_id"] for line in out + err]
    assert sorted(ids) == sorted(f"chat-{i}" for i in range(n)), "every custom_id exactly once"
    assert [line["custom_id"] for line in err] == ["chat-17"]
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["code"] == "context_length_exceeded"
    body = out[0]["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in {"stop", "length"}
    assert body["usage"]["completion_tokens"] <= 24
    assert body["usage"]["prompt_tokens"] > 0
    # usage on the record is the sum of the lines' usage
    assert record.usage.output_tokens == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in out)
    assert record.usage.input_tokens == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in out)
    assert record.output_file_id and record.error_file_id


def test_output_lives_under_the_content_address(stack, dropped):
    ref, _ = dropped["jobs"]["chat"]
    record = stack.ctx.batches.for_job(ref)
    assert record.result.prefix == f"{TENANT}/{record.content_sha256}/"
    summary = json.loads(stack.aws("s3", "cp", f"s3://{record.result.bucket}/{record.result.summary_key}", "-").stdout)
    assert summary["request_counts"] == record.request_counts.model_dump()
    assert summary["partial"] is False


def test_completions_batch_returns_text_completions(stack, dropped):
    ref, n = dropped["jobs"]["completions"]
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    out, err = results(stack, ref)
    assert err == []
    assert sorted(line["custom_id"] for line in out) == sorted(f"cmpl-{i}" for i in range(n))
    for line in out:
        body = line["response"]["body"]
        assert body["object"] == "text_completion"
        assert isinstance(body["choices"][0]["text"], str)
        assert 0 < body["usage"]["completion_tokens"] <= 12


def test_embeddings_batch_returns_one_vector_per_input(stack, dropped):
    ref, n = dropped["jobs"]["embeddings"]
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    out, err = results(stack, ref)
    assert err == []
    by_id = {line["custom_id"]: line["response"]["body"] for line in out}
    assert sorted(by_id) == sorted(f"emb-{i}" for i in range(n))
    for i in range(n):
        body = by_id[f"emb-{i}"]
        assert body["object"] == "list"
        assert len(body["data"]) == (2 if i % 2 else 1)
        dims = {len(item["embedding"]) for item in body["data"]}
        assert len(dims) == 1 and dims.pop() > 1


def test_identical_work_is_answered_from_the_outbox_without_the_engine(stack, dropped):
    ref, n = dropped["jobs"]["chat"]
    first = stack.ctx.batches.for_job(ref)
    passes = stack.engine.passes
    again = drop(stack, dropped["tmp"], dropped["key"], "chat-200-again", "/v1/chat/completions", chat_lines(200, overlong={17}))
    stack.drain()
    record = stack.ctx.batches.for_job(again)
    assert stack.engine.passes == passes, "a cache hit must not start the engine"
    assert record.status == BatchStatus.COMPLETED
    assert record.cached is True
    assert record.id != first.id
    assert record.content_sha256 == first.content_sha256
    assert record.result.output_key == first.result.output_key
    assert record.request_counts == first.request_counts


def test_outputs_are_reproducible_ids(stack, dropped):
    ref, _ = dropped["jobs"]["chat"]
    record = stack.ctx.batches.for_job(ref)
    out, _ = results(stack, ref)
    line = out[0]
    expected = "batch_req_" + hashlib.sha256(
        b"line\0" + record.content_sha256.encode() + b"\0" + line["custom_id"].encode() + b"\0"
    ).hexdigest()[:32]
    assert line["id"] == expected
