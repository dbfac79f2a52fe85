"""Nothing silently dropped: inline retry_config is honoured; /results after the output file was deleted says so.

A live gateway over the moto server; the watcher and the runner (echo engine
stand-in) run in this process to finish the batch.
"""

from __future__ import annotations

import json

import httpx
import pytest

from dropbatch.engine.echo import EchoEngine
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

POLICY = {"max_retries": 1, "retry_delay": 0.25, "backoff_factor": 3.0}


@pytest.fixture
def tenant_http(make_settings, live_gateway):
    settings = make_settings()
    live = live_gateway(settings)
    live.ctx.tenants.create("acme", "basic")
    token = live.ctx.tokens.create("acme").token
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        yield live.ctx, http


def test_inline_batch_honours_retry_config(tenant_http):
    ctx, http = tenant_http
    created = http.post("/v1/batches", json={"input": [{"prompt": "hello"}], "retry_config": POLICY})
    assert created.status_code == 200, created.text
    record = ctx.batches.get("acme", created.json()["id"])
    assert record.retry_config is not None and record.retry_config.model_dump() == POLICY
    manifest = json.loads(ctx.store.get(ctx.inbox, record.manifest_key)[0])
    assert manifest["retry_config"] == POLICY, "the signed manifest carries it to the watcher and runner"
    Watcher(ctx).run_once()
    assert ctx.batches.get("acme", record.id).retry_config.model_dump() == POLICY

    refused = http.post("/v1/batches", json={"input": [{"prompt": "hello"}], "retry_config": {"max_retries": 99}})
    assert refused.status_code == 422 and refused.json()["error"]["param"].startswith("retry_config")
    unknown = http.post("/v1/batches", json={"input": [{"prompt": "hello"}], "retry_config": {"tries": 2}})
    assert unknown.status_code == 422 and "retry_config" in unknown.json()["error"]["param"]


def test_results_after_the_output_file_was_deleted_say_so(tenant_http):
    ctx, http = tenant_http
    batch_id = http.post("/v1/batches", json={"input": [{"prompt": "hello"}, {"prompt": "world"}]}).json()["id"]
    Watcher(ctx).run_once()
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    batch = http.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "completed", batch
    assert len(http.get(f"/v1/batches/{batch_id}/results").json()["data"]) == 2

    output = batch["output_file_id"]
    assert http.delete(f"/v1/files/{output}").json()["deleted"] is True
    gone = http.get(f"/v1/batches/{batch_id}/results")
    assert gone.status_code == 404
    error = gone.json()["error"]
    assert error["code"] == "output_file_deleted"
    assert output in error["message"] and "deleted" in error["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate_batch", {"prompts": ["hi"], "retry_config": POLICY, "timeout": 1}),
        ("/v1/batches", {"input": [{"prompt": "hi"}], "top_p": 0.5}),
        ("/start", {"input": "s3://b/k", "output": "s3://b/o/", "n": 2}),
    ],
)
def test_a_field_a_route_does_not_take_is_refused_by_name(tenant_http, path, body):
    _, http = tenant_http
    answer = http.post(path, json=body)
    assert answer.status_code == 422, answer.text
    unknown = next(name for name in body if name not in {"prompts", "input", "output", "timeout"})
    assert unknown in answer.json()["error"]["param"]
