"""End to end through the gateway: the real OpenAI SDK, a live gateway, real vLLM (tiny model), the warm engine."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from dropbatch.errors import Conflict

pytestmark = pytest.mark.e2e

PROMPTS = ["Tell me a story about a cat.", "What is two plus two?", "Name a colour.", "Say hello."]


def test_openai_sdk_batch_runs_on_the_real_engine(stack) -> None:
    ctx = stack.ctx
    try:
        ctx.tenants.create("gateway-e2e", "premium")
    except Conflict:
        pass  # the session's stack is shared; the tenant may exist from a rerun
    token = ctx.tokens.create("gateway-e2e").token
    model = stack.settings.engine.model_name
    lines = [
        {
            "custom_id": f"sdk-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
        }
        for i, prompt in enumerate(PROMPTS)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    with OpenAI(base_url=stack.gateway_url + "/v1", api_key=token, max_retries=0, timeout=60) as client:
        uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "validating"

        stack.drain()

        done = client.batches.retrieve(batch.id)
        assert done.status == "completed", done.errors
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
            len(PROMPTS),
            len(PROMPTS),
            0,
        )
        assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0
        assert done.output_file_id is not None

        output = [
            json.loads(line) for line in client.files.content(done.output_file_id).content.splitlines() if line.strip()
        ]
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == model
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] <= 8
