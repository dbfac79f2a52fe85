"""The original design's API and the Python client, against the live gateway (echo engine stand-in)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import make_jsonl, read_jsonl, unavailable

import openai_batch_client
from dropbatch import client as client_module
from dropbatch.client import BatchClient, create_batch, get_batch_results, retrieve_batch
from dropbatch.errors import NotFound
from dropbatch.storage.s3 import make_client
from gateway.compat import outcome_of
from gateway.schemas import MAX_INLINE_ITEMS
from gateway.tokenize import BYTES_PER_TOKEN

ADMIN_TOKEN = "admin-test-token-0123456789"  # conftest.ADMIN_TOKEN

pytestmark = pytest.mark.integration

PROMPTS = ["the quick brown fox", "jumps over the lazy dog", "hello"]


def jsonl_text(lines: list[dict]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


@contextlib.contextmanager
def services_running(ctx, drain) -> Iterator[None]:
    """Watcher and runner passes in a background thread, as `dropbatch up` runs them."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            drain(ctx)
            stop.wait(0.05)

    thread = threading.Thread(target=loop, name="services", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@pytest.fixture
def http(live, tenant_token) -> Iterator[httpx.Client]:
    token = tenant_token(live.ctx, "acme").token
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        yield client


def test_health(settings, live, start_gateway, make_settings, make_context) -> None:
    report = httpx.get(live.url + "/health")
    assert (report.status_code, report.json()) == (200, {"status": "healthy"})
    assert (httpx.get(live.url + "/ready").status_code, httpx.get(live.url + "/ready").json()) == (
        200,
        {"status": "ready"},
    )
    assert report.headers["x-request-id"].startswith("req_")
    echoed = httpx.get(live.url + "/health", headers={"x-request-id": "client-abc.1"})
    assert echoed.headers["x-request-id"] == "client-abc.1"
    detail = httpx.get(live.url + "/admin/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    body = detail.json()
    assert detail.status_code == 200 and (body["status"], body["service"]) == ("healthy", "dropbatch-gateway")
    assert body["version"] and body["components"]["s3"] == {"status": "ok", "endpoint": settings.storage.endpoint_url}
    assert {b["status"] for b in body["components"]["buckets"].values()} == {"ok"}
    assert (body["processor_initialized"], body["config_loaded"]) == (True, True)

    broken_settings = make_settings(DROPBATCH_OUTBOX_BUCKET="no-such-outbox", DROPBATCH_ADMIN_TOKEN=ADMIN_TOKEN)
    broken = start_gateway(broken_settings, ctx=make_context(broken_settings, bootstrap=False))
    down = httpx.get(broken.url + "/health")
    assert (down.status_code, down.json()) == (503, {"status": "unhealthy"})
    degraded = httpx.get(broken.url + "/ready")
    assert degraded.status_code == 503
    assert degraded.json() == {
        "status": "unavailable",
        "components": {"s3": "ok", "inbox": "ok", "outbox": "missing", "control": "ok"},
    }
    detail = httpx.get(broken.url + "/admin/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert detail.status_code == 503
    assert detail.json()["components"]["buckets"]["outbox"] == {"bucket": "no-such-outbox", "status": "missing"}
    assert httpx.get(live.url + "/openapi.json").json()["openapi"].startswith("3.")


def test_inline_batch_and_results(settings, live, http, drain) -> None:
    created = http.post(
        "/v1/batches", json={"input": [{"prompt": p} for p in PROMPTS], "max_tokens": 5, "temperature": 0.5}
    )
    assert created.status_code == 200, created.text
    batch = created.json()
    assert (batch["object"], batch["status"], batch["warnings"]) == ("batch", "validating", [])
    assert batch["endpoint"] == "/v1/chat/completions"
    submitted = read_jsonl(http.get(f"/v1/files/{batch['input_file_id']}/content").content)
    assert [line["body"]["messages"] for line in submitted] == [[{"role": "user", "content": p}] for p in PROMPTS]
    assert {(line["body"]["max_tokens"], line["body"]["temperature"]) for line in submitted} == {(5, 0.5)}
    assert http.get(f"/v1/batches/{batch['id']}/results").status_code == 409  # not finished yet

    drain(live.ctx)
    done = http.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    results = http.get(f"/v1/batches/{batch['id']}/results").json()
    outputs = {
        line["custom_id"]: line["response"]["body"]
        for line in read_jsonl(http.get(f"/v1/files/{done['output_file_id']}/content").content)
    }
    assert [r["input"]["prompt"] for r in results["data"]] == PROMPTS
    for item in results["data"]:
        body = outputs[item["custom_id"]]
        assert item["output_text"] == body["choices"][0]["message"]["content"]
        assert item["tokens_generated"] == body["usage"]["completion_tokens"] > 0
        assert item["error"] is None


def test_results_of_a_failed_batch_say_it_failed(settings, live, http, drain) -> None:
    bad = http.post("/v1/files", files={"file": ("bad.jsonl", b'{"custom_id": "a"}\n')}, data={"purpose": "batch"})
    assert bad.status_code == 200, bad.text
    created = http.post("/v1/batches", json={"input_file_id": bad.json()["id"], "endpoint": "/v1/chat/completions",
                                             "completion_window": "24h"})
    assert created.status_code == 200, created.text
    drain(live.ctx)
    assert http.get(f"/v1/batches/{created.json()['id']}").json()["status"] == "failed"
    results = http.get(f"/v1/batches/{created.json()['id']}/results")
    assert results.status_code == 409 and results.json()["error"]["code"] == "batch_failed"


def test_a_responses_line_s_text_and_tokens_in_the_results() -> None:
    body = {"object": "response", "status": "completed", "usage": {"input_tokens": 13, "output_tokens": 5},
            "output": [{"type": "reasoning", "content": []},
                       {"type": "message", "content": [{"type": "output_text", "text": "Hel"},
                                                       {"type": "output_text", "text": "lo"}]}]}
    outcome = outcome_of({"custom_id": "r", "response": {"status_code": 200, "body": body}, "error": None})
    assert (outcome["output_text"], outcome["tokens_generated"], outcome["error"]) == ("Hello", 5, None)


def test_inline_batch_truncates_past_the_limit(settings, live, http) -> None:
    items = [{"prompt": f"p{i}"} for i in range(MAX_INLINE_ITEMS + 5)]
    created = http.post("/v1/batches", json={"input": items})
    assert created.status_code == 200
    batch = created.json()
    assert len(batch["warnings"]) == 1 and str(MAX_INLINE_ITEMS) in batch["warnings"][0]
    content = http.get(f"/v1/files/{batch['input_file_id']}/content").content
    assert len(read_jsonl(content)) == MAX_INLINE_ITEMS
    unknown_model = http.post("/v1/batches", json={"input": items[:1], "model": "gpt-4o"})
    assert unknown_model.status_code == 404 and unknown_model.json()["error"]["code"] == "model_not_found"


def test_validate(settings, live, http) -> None:
    def check(json_data, **extra) -> dict:
        response = http.post("/v1/batches/validate", json={"json_data": json_data, **extra})
        assert response.status_code == 200, response.text
        return response.json()

    good = check({"input": [{"prompt": p} for p in PROMPTS], "max_tokens": 8})
    assert (good["is_valid"], good["errors"], good["estimated_items"]) == (True, [], len(PROMPTS))
    capped = check([{"prompt": p} for p in PROMPTS], max_batch_size=2)
    assert capped["is_valid"] and capped["estimated_items"] == 2 and capped["warnings"]
    bad = check({"input": [{"prompt": ""}], "temperature": 5})
    assert not bad["is_valid"] and len(bad["errors"]) == 2

    lines = make_jsonl(3)
    assert check(jsonl_text(lines))["estimated_items"] == 3
    broken = lines[:1] + [{**lines[1], "method": "GET"}] + lines[2:]
    report = check(jsonl_text(broken))
    assert not report["is_valid"] and report["estimated_items"] == 2
    assert report["errors"][0].startswith("Line 2")
    too_many = check(jsonl_text(lines), max_batch_size=2)
    assert not too_many["is_valid"]


def _word_tokenizer(directory: Path) -> Path:
    """A word-level tokenizer.json trained on local text (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(PROMPTS, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    directory.mkdir(parents=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def _words(text: str) -> int:
    """What a whitespace + punctuation pre-tokenizer with a word-level model makes of ``text``."""
    return len(re.findall(r"\w+|[^\w\s]+", text))


def test_cost_estimate_with_the_models_tokenizer(make_settings, start_gateway, tenant_token, tmp_path) -> None:
    try:
        import tokenizers  # noqa: F401 - the model's tokenizer is what the estimate must use
    except ImportError:
        unavailable("the tokenizers package is not installed")
    model_dir = _word_tokenizer(tmp_path / "model")
    live = start_gateway(make_settings(DROPBATCH_MODEL=str(model_dir)))
    token = tenant_token(live.ctx, "acme").token
    with BatchClient(live.url, token) as client:
        prompts = PROMPTS + ["unseen words, still counted!"]
        estimate = client.estimate_cost(prompts, max_tokens=10)
        assert estimate["tokenizer"] == "tokenizer.json"
        assert estimate["input_tokens"] == sum(_words(p) for p in prompts)
        assert (estimate["items"], estimate["max_output_tokens"]) == (len(prompts), 10 * len(prompts))
        price = estimate["pricing"]
        expected = (
            estimate["input_tokens"] / 1e6 * price["input_per_million_usd"]
            + 10 * len(prompts) / 1e6 * price["output_per_million_usd"]
        )
        assert estimate["estimated_cost_usd"] == pytest.approx(expected)
        assert estimate["estimated_cost_usd"] > 0

        uploaded = httpx.post(
            live.url + "/v1/files",
            headers={"Authorization": f"Bearer {token}"},
            data={"purpose": "batch"},
            files={"file": ("in.jsonl", jsonl_text(make_jsonl(4, max_tokens=7)).encode())},
        ).json()
        from_file = client.estimate_cost(input_file_id=uploaded["id"])
        assert from_file["max_output_tokens"] == 4 * 7
        texts = [line["body"]["messages"][0]["content"] for line in make_jsonl(4)]
        assert from_file["input_tokens"] == sum(_words(t) for t in texts)
        with pytest.raises(NotFound):
            client.estimate_cost(["x"], model="gpt-4o")


def test_cost_estimate_without_a_tokenizer_says_estimate(make_settings, start_gateway, tenant_token, tmp_path) -> None:
    live = start_gateway(make_settings(DROPBATCH_MODEL=str(tmp_path / "no-model-here")))
    with BatchClient(live.url, tenant_token(live.ctx, "acme").token) as client:
        estimate = client.estimate_cost(PROMPTS)
    assert estimate["tokenizer"] == "estimate"
    assert estimate["input_tokens"] == sum(-(-len(p.encode()) // BYTES_PER_TOKEN) for p in PROMPTS)


def test_generate_batch_waits_for_results(settings, live, http, drain) -> None:
    with services_running(live.ctx, drain):
        response = http.post("/generate_batch", json={"prompts": PROMPTS, "max_tokens": 4, "timeout": 60})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert [r["input"]["prompt"] for r in body["results"]] == PROMPTS
    assert all(r["output_text"] for r in body["results"])
    assert body["total_time"] > 0
    assert body["throughput"]["requests_per_second"] > 0

    pending = http.post("/generate_batch", json={"prompts": PROMPTS, "timeout": 0.3})
    assert pending.status_code == 202
    assert pending.json()["status"] == "validating" and pending.json()["results"] == []


def test_start_and_jobs_copy_results_to_the_output_uri(settings, live, http, drain) -> None:
    s3 = make_client("s3", settings.storage)
    s3.create_bucket(Bucket="user-data")
    items = [{"prompt": p} for p in PROMPTS] + [make_jsonl(1, prefix="openai-line")[0]]
    s3.put_object(Bucket="user-data", Key="in/prompts.jsonl", Body=jsonl_text(items).encode())
    live.ctx.grants.create("acme", "s3://user-data/in", read=True, write=False)
    live.ctx.grants.create("acme", "s3://user-data/out", read=False, write=True)

    started = http.post("/start", json={"input": "s3://user-data/in/prompts.jsonl", "output": "s3://user-data/out/"})
    assert started.status_code == 200, started.text
    job = started.json()
    assert job["id"].startswith("job-") and job["status"] == "validating"
    assert http.get(f"/jobs/{job['id']}").json()["output_ready"] is False

    drain(live.ctx)
    view = http.get(f"/jobs/{job['id']}").json()
    assert (view["status"], view["output_ready"]) == ("completed", True)
    assert view["outputs"] == {"output": "s3://user-data/out/output.jsonl"}
    output = read_jsonl(s3.get_object(Bucket="user-data", Key="out/output.jsonl")["Body"].read())
    assert sorted(line["custom_id"] for line in output) == sorted(["line-1", "line-2", "line-3", "openai-line-0"])

    control = settings.storage.control_bucket
    refused = [
        {"input": f"s3://{control}/tokens/x", "output": "s3://user-data/out/"},
        {"input": f"s3://{settings.storage.inbox_bucket}/other-tenant/x.jsonl", "output": "s3://user-data/out/"},
        {"input": "s3://user-data/in/prompts.jsonl", "output": f"s3://{settings.storage.outbox_bucket}/acme/x"},
        {"input": "s3://user-data/in/prompts.jsonl", "output": "s3://nowhere-bucket/x"},
    ]
    for body in refused:
        answer = http.post("/start", json=body)
        assert (answer.status_code, answer.json()["error"]["code"]) == (403, "location_not_granted"), body
    missing = http.post("/start", json={"input": "s3://user-data/in/missing.jsonl", "output": "s3://user-data/out/m/"})
    assert missing.status_code == 404  # inside a read grant, a missing input may say so


def test_python_client_against_the_live_gateway(settings, live, tenant_token, drain) -> None:
    token = tenant_token(live.ctx, "acme").token
    assert openai_batch_client.BatchClient is BatchClient
    assert set(openai_batch_client.__all__) == set(client_module.__all__)

    batch = create_batch(PROMPTS, base_url=live.url + "/v1", api_key=token, max_tokens=4)
    assert retrieve_batch(batch["id"], base_url=live.url, api_key=token)["status"] == "validating"
    with BatchClient(live.url, api_key=token) as client:
        with pytest.raises(TimeoutError):
            client.wait_for_completion(batch["id"], poll_interval=0.1, timeout=0.3)
        with services_running(live.ctx, drain):
            final = client.wait_for_completion(batch["id"], poll_interval=0.1, timeout=60)
        assert final["status"] == "completed" and final["request_counts"]["completed"] == len(PROMPTS)
        report = client.validate_input({"input": [{"prompt": "hi"}]})
        assert report["is_valid"] and report["estimated_items"] == 1
        assert client.health() == {"status": "healthy"}
        with pytest.raises(NotFound):
            client.retrieve_batch("batch_missing")
    results = get_batch_results(batch["id"], base_url=live.url, api_key=token)
    assert [r["input"]["prompt"] for r in results["data"]] == PROMPTS
    assert all(r["tokens_generated"] > 0 for r in results["data"])
