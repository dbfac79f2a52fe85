"""Every body field is checked at admission, the same way everywhere, and quotas count engine work.

Through the real gateway (uvicorn on loopback, the OpenAI SDK and httpx) and the
real watcher on the moto server: ``/v1/batches/validate``, the cost estimate, a
file + batch made with the SDK, and a drop-box job with a signed manifest all
refuse the same bad values, naming the line and the field (``body.top_p``,
``body.messages[0].role`` …), never with a 500. A free-tier tenant cannot slip
20,000 embeddings (or 150, over its 100-request hour) through as one line.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from helpers import make_jsonl, make_line, make_tenant
from openai import OpenAI

from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.integration

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
IMAGE = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]

# (what the line's body gets, the error code, the param it names); each is line 2 of a file whose lines 1 and 3 are fine.
BAD_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({"temperature": "hot"}, "invalid_body", "body.temperature"),
    ({"temperature": True}, "invalid_body", "body.temperature"),
    ({"top_p": [1]}, "invalid_body", "body.top_p"),
    ({"stop": {"a": 1}}, "invalid_body", "body.stop"),
    ({"messages": [{"role": "god", "content": "hi"}]}, "invalid_body", "body.messages[0].role"),
    ({"max_tokens": 10**400}, "invalid_body", "body.max_tokens"),
    ({"max_tokens": -3}, "invalid_body", "body.max_tokens"),
    ({"max_tokens": 100_000}, "invalid_body", "body.max_tokens"),  # past the model's 512-token context
    ({"top_logprobs": 25}, "invalid_body", "body.top_logprobs"),
    ({"messages": IMAGE}, "unsupported_content_type", "body.messages[0].content[0].type"),
    ({"temprature": 0.5}, "unknown_parameter", "body.temprature"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "unsupported_parameter", "body.tools"),
    ({"n": 0}, "invalid_body", "body.n"),
]


def _file(bad: dict[str, Any]) -> list[dict[str, Any]]:
    lines = make_jsonl(3)
    lines[1]["body"].update(bad)
    return lines


def _text(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def live(make_settings, live_gateway):
    return live_gateway(make_settings(), token_cache_seconds=0)


@pytest.fixture
def token(live) -> str:
    live.ctx.tenants.create("acme", "enterprise")
    return live.ctx.tokens.create("acme").token


@pytest.fixture
def http(live, token):
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        yield client


def test_validate_names_line_and_field_for_every_bad_value(http) -> None:
    for bad, _, param in BAD_FIELDS:
        answer = http.post("/v1/batches/validate", json={"json_data": _text(_file(bad)).decode()})
        assert answer.status_code == 200, answer.text
        report = answer.json()
        assert report["is_valid"] is False and report["format"] == "jsonl"
        assert len(report["errors"]) == 1, report
        assert report["errors"][0].startswith(f"Line 2: {param} "), report
        assert report["estimated_items"] == 2
    good = http.post("/v1/batches/validate", json={"json_data": _text(make_jsonl(3)).decode()}).json()
    assert (good["is_valid"], good["errors"]) == (True, [])


def test_validate_inline_items_with_the_same_rules(http) -> None:
    items = [{"prompt": "hello"}, {"prompt": "again"}]
    report = http.post("/v1/batches/validate", json={"json_data": {"input": items, "max_tokens": 100_000}}).json()
    assert report["format"] == "inline" and report["is_valid"] is False
    assert [e.split(": ", 1)[0] for e in report["errors"]] == ["max_tokens"]
    assert "context" in report["errors"][0]
    report = http.post("/v1/batches/validate", json={"json_data": {"input": items, "max_tokens": 64}}).json()
    assert (report["is_valid"], report["errors"], report["estimated_items"]) == (True, [], 2)


@pytest.mark.parametrize(
    "max_tokens", [10**400, -5, 0, True, 1.5, "9", 2**64], ids=["10**400", "-5", "0", "true", "1.5", "'9'", "2**64"]
)
def test_cost_estimate_answers_400_naming_the_line_never_500(http, max_tokens: Any) -> None:
    lines = make_jsonl(3)
    lines[2]["body"]["max_tokens"] = max_tokens
    file_id = http.post("/v1/files", files={"file": ("f.jsonl", _text(lines))}, data={"purpose": "batch"}).json()["id"]
    answer = http.post("/v1/batches/cost-estimate", json={"input_file_id": file_id})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_body", "body.max_tokens")
    assert "Line 3" in error["message"] and file_id in error["message"]


def test_cost_estimate_of_a_valid_file_is_never_negative(http) -> None:
    lines = make_jsonl(3, max_tokens=5)
    file_id = http.post("/v1/files", files={"file": ("f.jsonl", _text(lines))}, data={"purpose": "batch"}).json()["id"]
    estimate = http.post("/v1/batches/cost-estimate", json={"input_file_id": file_id}).json()
    assert (estimate["items"], estimate["max_output_tokens"]) == (3, 15)
    assert estimate["estimated_cost_usd"] > 0 and estimate["input_tokens"] > 0
    embed = [make_line(f"e{i}", EMBEDDINGS, text="some words") for i in range(2)]
    file_id = http.post("/v1/files", files={"file": ("e.jsonl", _text(embed))}, data={"purpose": "batch"}).json()["id"]
    estimate = http.post("/v1/batches/cost-estimate", json={"input_file_id": file_id}).json()
    assert (estimate["items"], estimate["max_output_tokens"]) == (2, 0) and estimate["estimated_cost_usd"] >= 0


def test_sdk_batch_fails_validation_naming_line_and_field(live, token) -> None:
    client = OpenAI(base_url=live.url + "/v1", api_key=token, max_retries=0, timeout=30)
    try:
        created = []
        for bad, _, _ in BAD_FIELDS:
            upload = client.files.create(file=("in.jsonl", _text(_file(bad))), purpose="batch")
            created.append(client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h").id)
        Watcher(live.ctx).run_once()
        for batch_id, (_, code, param) in zip(created, BAD_FIELDS, strict=True):
            batch = client.batches.retrieve(batch_id)
            assert batch.status == "failed", (param, batch.status)
            assert batch.errors is not None and batch.errors.data is not None
            [error] = batch.errors.data
            assert (error.code, error.line, error.param) == (code, 2, param)
            assert error.message is not None and error.message.startswith(f"Line 2: {param}")
    finally:
        client.close()


def test_dropbox_rejection_names_line_and_field(make_settings, make_context, drop_job, aws) -> None:
    ctx = make_context(make_settings())
    _, key = make_tenant(ctx, "acme")
    lines = make_jsonl(len(BAD_FIELDS) + 1)  # line 1 is fine; line k + 2 carries BAD_FIELDS[k]
    for line, (bad, _, _) in zip(lines[1:], BAD_FIELDS, strict=True):
        line["body"].update(bad)
    ref = drop_job(ctx, key, lines)
    Watcher(ctx).run_once()
    rejection = json.loads(aws.read(ctx.inbox, ref.rejection_key))
    assert rejection["code"] == "invalid_input"
    assert [(e["code"], e["line"], e["param"]) for e in rejection["errors"]] == [
        (code, number, param) for number, (_, code, param) in enumerate(BAD_FIELDS, start=2)
    ]
    assert all(e["message"].startswith(f"Line {e['line']}: {e['param']} ") for e in rejection["errors"])
    assert ctx.batches.for_job(ref).status is BatchStatus.FAILED
    assert list(ctx.queue.entries()) == []
    assert ctx.quotas.usage("acme", "basic")[0] == 0


def test_free_tier_embeddings_are_counted_per_input(make_settings, make_context, drop_job, aws) -> None:
    ctx = make_context(make_settings())
    _, key = make_tenant(ctx, "freeloader", tier="free")
    limit = ctx.settings.limits.tier_quotas["free"]
    assert limit == 100

    def embeddings_line(custom_id: str, inputs: int) -> dict[str, Any]:
        line = make_line(custom_id, EMBEDDINGS)
        line["body"]["input"] = [f"text {i}" for i in range(inputs)]
        return line

    huge = drop_job(ctx, key, [embeddings_line("all", 20_000)], job="huge")
    over = drop_job(ctx, key, [embeddings_line("a", 60), embeddings_line("b", 90)], job="over")
    fits = drop_job(ctx, key, [embeddings_line("c", 40), embeddings_line("d", 30)], job="fits")
    Watcher(ctx).run_once()

    rejection = json.loads(aws.read(ctx.inbox, huge.rejection_key))
    assert [(e["code"], e["line"], e["param"]) for e in rejection["errors"]] == [("invalid_body", 1, "body.input")]
    assert "2048" in rejection["errors"][0]["message"]

    rejection = json.loads(aws.read(ctx.inbox, over.rejection_key))
    assert rejection["code"] == "quota_exceeded"
    assert "150 requests (from 2 request lines" in rejection["reason"]

    admitted = ctx.batches.for_job(fits)
    assert admitted.status is BatchStatus.IN_PROGRESS
    assert admitted.request_counts.total == 2  # request_counts stay per line, as OpenAI's do
    assert ctx.quotas.usage("freeloader", "free") == (70, limit)
