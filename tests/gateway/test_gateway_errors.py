"""Every error status the gateway sends raises the OpenAI SDK's matching class; bad input is never a 500."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from helpers import make_jsonl
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.ratelimit import TierRate

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def jsonl_bytes(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_each_status_raises_the_sdk_class(settings, live, tenant_token, sdk, drain) -> None:
    token = tenant_token(live.ctx, "acme")
    client = sdk(live, token.token)

    with pytest.raises(openai.AuthenticationError) as unknown:
        sdk(live, "dbt_" + "x" * 43).batches.list()
    assert unknown.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(live, "not-even-a-token").files.list()

    admin_route = OpenAI(base_url=live.url, api_key=token.token, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        admin_route.get("/admin/tokens", cast_to=object)
    admin_route.close()

    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_does_not_exist")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-000000000000000000000000")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")

    file = client.files.create(file=("in.jsonl", jsonl_bytes(make_jsonl(2))), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    drain(live.ctx)
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    with pytest.raises(openai.ConflictError) as conflict:
        client.batches.cancel(batch.id)
    assert conflict.value.code == "invalid_state"
    assert conflict.value.response.headers["x-should-retry"] == "false"  # a state conflict is not transient

    with pytest.raises(openai.BadRequestError) as wrong_file:  # an output file is not batch input
        client.batches.create(input_file_id=done.output_file_id, endpoint=CHAT, completion_window="24h")
    assert wrong_file.value.code == "invalid_input_file"
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="assistants")
    assert purpose.value.code == "unsupported_purpose"
    with pytest.raises(openai.BadRequestError) as empty:
        client.files.create(file=("empty.jsonl", b""), purpose="batch")
    assert (empty.value.code, empty.value.param) == ("empty_file", "file")

    with pytest.raises(openai.UnprocessableEntityError) as endpoint:
        client.batches.create(input_file_id=file.id, endpoint="/v1/moderations", completion_window="24h")
    assert endpoint.value.param == "endpoint"
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(
            input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={f"k{i}": "v" for i in range(17)}
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"k" * 65: "v"})
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v" * 513})
    with pytest.raises(openai.UnprocessableEntityError):
        client.batches.list(limit=101)
    ok = client.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata={f"k{i}": "v" * 512 for i in range(16)}
    )
    assert ok.metadata is not None and len(ok.metadata) == 16


def test_rate_limit_answers_429_with_retry_after(settings, start_gateway, tenant_token, sdk) -> None:
    live = start_gateway(settings, rate_limits={"basic": TierRate(per_minute=6, burst=2)})
    token = tenant_token(live.ctx, "acme", tier="basic")
    client = sdk(live, token.token)
    client.batches.list()
    client.files.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.batches.list()
    retry_after = limited.value.response.headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 120
    assert limited.value.code == "rate_limit_exceeded"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(live.url + "/metrics").text)
        for s in family.samples
    }
    assert samples[("dropbatch_rate_limited_total", (("tier", "basic"),))] == 1
    route_429 = (("method", "GET"), ("route", "/v1/batches"), ("status", "429"))
    assert samples[("dropbatch_http_requests_total", route_429)] == 1
    # The bucket is per token: another token of the same tenant is not limited.
    second = live.ctx.tokens.create("acme")
    assert sdk(live, second.token).batches.list().data == []


def test_upload_over_the_size_limit_is_413(make_settings, start_gateway, tenant_token, sdk) -> None:
    settings = make_settings(DROPBATCH_MAX_FILE_BYTES="1000")
    live = start_gateway(settings)
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert too_big.value.status_code == 413
    assert too_big.value.code == "file_too_large"
    assert client.files.list().data == []
    assert list(live.ctx.store.list(live.ctx.inbox)) == []  # nothing half-stored
    small = client.files.create(file=("small.jsonl", b"y" * 900), purpose="batch")
    assert small.bytes == 900


def test_bad_input_is_never_a_500(settings, live, tenant_token) -> None:
    token = tenant_token(live.ctx, "acme").token
    http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    post_json = {"content-type": "application/json"}

    assert (
        assert_envelope(http.post("/v1/batches", content=b"{not json", headers=post_json), 400)["code"]
        == "invalid_json"
    )
    assert_envelope(http.post("/v1/batches", content=b"[1, 2]", headers=post_json), 400)
    assert_envelope(http.post("/v1/batches", content=b"", headers=post_json), 400)
    missing = assert_envelope(http.post("/v1/batches", json={}), 422)
    assert missing["code"] == "missing_required_parameter"
    assert (
        assert_envelope(
            http.post("/v1/batches", json={"input_file_id": 5, "endpoint": CHAT, "completion_window": "24h"}), 422
        )["param"]
        == "input_file_id"
    )
    assert_envelope(
        http.post("/v1/batches", json={"input_file_id": "f", "endpoint": CHAT, "completion_window": "48h"}), 422
    )
    assert_envelope(http.post("/v1/batches", json={"input": "not a list"}), 422)
    assert_envelope(http.post("/v1/batches", json={"input": [{"prompt": ""}]}), 422)
    assert_envelope(http.post("/v1/batches/batch_x/cancel", content=b"{oops", headers=post_json), 400)

    assert_envelope(http.post("/v1/files", json={"purpose": "batch"}), 400)
    broken = http.post(
        "/v1/files",
        content=b"--b\r\nthis is not multipart",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert_envelope(broken, 400)
    assert_envelope(http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}), 422)
    assert_envelope(http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")}), 422)
    assert_envelope(http.post("/v1/files", data={"purpose": "nonsense"}, files={"file": ("a", b"x")}), 422)

    assert_envelope(http.get("/v1/batches", params={"limit": "abc"}), 422)
    assert_envelope(http.get("/v1/batches", params={"limit": "0"}), 422)
    assert_envelope(http.get("/v1/batches", params={"after": "batch_unknown"}), 404)
    assert_envelope(http.get("/v1/batches", params={"after": "../x"}), 422)
    assert_envelope(http.get("/v1/files/" + "f" * 2000), 404)
    assert_envelope(http.get("/v1/files/%E2%9C%93/content"), 404)
    assert_envelope(http.post("/v1/batches/..%2F..%2Fx/cancel"), 404)
    assert_envelope(
        http.post("/v1/batches", json={"input_file_id": "é" * 600, "endpoint": CHAT, "completion_window": "24h"}), 422
    )
    assert_envelope(http.get("/v1/files", params={"order": "sideways"}), 422)
    assert_envelope(http.get("/v1/files", params={"limit": "10001"}), 422)
    assert_envelope(http.post("/v1/batches/validate", json={"json_data": 5}), 422)
    assert_envelope(http.post("/v1/batches/cost-estimate", json={"input": [{"prompt": "hi"}], "max_tokens": "9"}), 422)
    assert_envelope(http.post("/start", json={"input": "http://not-s3", "output": "s3://bucket/x"}), 422)
    assert_envelope(http.get("/jobs/job-unknown"), 404)
    assert_envelope(http.put("/v1/batches"), 405)
    assert_envelope(http.get("/no/such/route"), 404)
    assert_envelope(httpx.get(live.url + "/v1/batches", headers={"Authorization": "Basic abc"}), 401)
    assert_envelope(httpx.get(live.url + "/v1/batches"), 401)
    http.close()


def test_a_client_that_goes_away_mid_upload_is_no_server_error(live, tenant_token) -> None:
    """A cut-short upload (a client timeout) is counted as 499, never logged or counted as a 500."""
    import socket
    from urllib.parse import urlsplit

    token = tenant_token(live.ctx, "acme").token
    url = urlsplit(live.url)
    head = (
        "POST /v1/files HTTP/1.1\r\n"
        f"Host: {url.hostname}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 100000\r\n\r\n"
        '--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n{"custom_id"'
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode())
    deadline = time.monotonic() + 20
    scraped = ""
    while 'status="499"' not in scraped and time.monotonic() < deadline:
        time.sleep(0.1)
        scraped = httpx.get(live.url + "/metrics", timeout=10).text
    files = [line for line in scraped.splitlines() if line.startswith("dropbatch_http_requests_total") and "/v1/files" in line]
    assert any('status="499"' in line for line in files), files
    assert not any('status="500"' in line for line in files), files
