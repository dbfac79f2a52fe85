"""Several served models through the real OpenAI SDK: /v1/models, and batches that run on the model their lines name."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from helpers import make_jsonl

from dropbatch.models import BatchStatus

pytestmark = pytest.mark.integration

MODELS = {"DROPBATCH_MODELS": "dropbatch-tiny=.dropbatch/models/dropbatch-tiny,"
                              "dropbatch-tiny-embed=.dropbatch/models/dropbatch-tiny-embed,"
                              "org/hub-model=Qwen/Qwen2.5-0.5B-Instruct"}


@pytest.fixture
def several(make_settings, start_gateway, tenant_token, sdk):
    settings = make_settings(**MODELS, DROPBATCH_CHUNK_LINES="4")
    live = start_gateway(settings, token_cache_seconds=0)
    return live, sdk(live, tenant_token(live.ctx, "acme").token)


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_models_list_and_retrieve_as_the_sdk_reads_them(several) -> None:
    _, client = several
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["dropbatch-tiny", "dropbatch-tiny-embed", "org/hub-model"]
    assert {(m.object, m.owned_by) for m in listed.data} == {("model", "dropbatch")}
    assert client.models.retrieve("dropbatch-tiny-embed").id == "dropbatch-tiny-embed"
    assert client.models.retrieve("org/hub-model").created == 0  # a hub id: no local build time
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    assert "'dropbatch-tiny', 'dropbatch-tiny-embed', 'org/hub-model'" in info.value.message


def test_models_need_a_token(several) -> None:
    live, _ = several
    anonymous = openai.OpenAI(base_url=live.v1, api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    anonymous.close()


def test_a_batch_runs_on_the_model_its_lines_name(several, drain) -> None:
    live, client = several
    second = client.files.create(file=("b.jsonl", _jsonl(make_jsonl(3, model="dropbatch-tiny-embed"))), purpose="batch")
    default = client.files.create(file=("a.jsonl", _jsonl(make_jsonl(3))), purpose="batch")
    batches = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
               for f in (second, default)]
    assert [b.model for b in batches] == ["dropbatch-tiny-embed", "dropbatch-tiny"]
    drain(live.ctx)
    done = [client.batches.retrieve(b.id) for b in batches]
    assert [b.status for b in done] == [BatchStatus.COMPLETED.value] * 2
    for batch, model in zip(done, ("dropbatch-tiny-embed", "dropbatch-tiny"), strict=True):
        lines = client.files.content(batch.output_file_id).text.splitlines()
        assert {json.loads(line)["response"]["body"]["model"] for line in lines} == {model}
    # The same input on two models is two different pieces of work: two content addresses.
    records = [live.ctx.batches.get("acme", b.id) for b in done]
    assert records[0].content_sha256 != records[1].content_sha256


def test_an_unknown_model_fails_fast_naming_the_served_ones(several) -> None:
    _, client = several
    unknown = client.files.create(file=("u.jsonl", _jsonl(make_jsonl(2, model="gpt-4o"))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=unknown.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert info.value.code == "model_not_found" and "'dropbatch-tiny-embed'" in info.value.message


def test_one_batch_one_model(several, drain) -> None:
    live, client = several
    lines = make_jsonl(3)
    lines[2]["body"]["model"] = "dropbatch-tiny-embed"
    mixed = client.files.create(file=("m.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=mixed.id, endpoint="/v1/chat/completions", completion_window="24h")
    drain(live.ctx)
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert failed.errors is not None and failed.errors.data[0].code == "mismatched_model"
    assert failed.errors.data[0].line == 3


def test_validate_checks_the_lines_against_the_model_they_name(several) -> None:
    live, client = several
    headers = {"Authorization": f"Bearer {client.api_key}"}

    with httpx.Client(base_url=live.url, headers=headers, timeout=30) as http:
        second = http.post("/v1/batches/validate",
                           json={"json_data": _jsonl(make_jsonl(2, model="dropbatch-tiny-embed")).decode()}).json()
        assert second["is_valid"] is True, second
        unknown = http.post("/v1/batches/validate", json={"json_data": _jsonl(make_jsonl(2, model="gpt-4o")).decode()})
        report = unknown.json()
        assert report["is_valid"] is False
        assert any("gpt-4o" in e and "'dropbatch-tiny-embed'" in e for e in report["errors"]), report
