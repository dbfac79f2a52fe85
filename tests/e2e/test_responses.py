"""/v1/responses lines on the real engine, answered by vLLM's own OpenAIServingResponses."""

from __future__ import annotations

import json

import pytest
from soak import submit
from test_warm_engine import outputs

from dropbatch.models import BatchStatus

pytestmark = pytest.mark.e2e

MODEL = "dropbatch-tiny"
SCHEMA = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}}, "required": ["label"],
          "additionalProperties": False}


def line(custom_id: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/responses",
            "body": {"model": MODEL, "input": "Classify: win a prize now", "max_output_tokens": 24, **body}}


def test_responses_lines_come_back_as_response_objects(stack):
    stack.ctx.tenants.create("e2e-responses", "enterprise")
    lines = [
        line("plain"),
        line("chat", input=[{"role": "user", "content": [{"type": "input_text", "text": "héllo ✓"}]}],
             instructions="Answer briefly.", temperature=0.7, top_p=0.9, metadata={"k": "v"}),
        *[line(f"schema-{i}", temperature=1, text={"format": {"type": "json_schema", "name": "label",
                                                              "schema": SCHEMA, "strict": True}})
          for i in range(6)],
        line("logprobs", temperature=0, top_logprobs=2, include=["message.output_text.logprobs"]),
    ]
    ref = submit(stack.ctx, "e2e-responses", "responses", lines, endpoint="/v1/responses")
    stack.drain()
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    got = outputs(stack, record)
    assert (record.request_counts.completed, record.request_counts.failed) == (9, 0), got
    for custom_id, answer in got.items():
        body = answer["response"]["body"]
        assert body["object"] == "response" and body["model"] == MODEL, custom_id
        assert body["id"].startswith("resp_") and body["created_at"] in (record.in_progress_at, record.created_at)
        assert body["usage"]["output_tokens"] > 0
    bodies = [answer["response"]["body"]["usage"] for answer in got.values()]
    assert record.usage is not None and (record.usage.input_tokens, record.usage.output_tokens) == (
        sum(u["input_tokens"] for u in bodies), sum(u["output_tokens"] for u in bodies)
    )  # the batch's usage adds up the Responses API's input/output_tokens
    assert got["chat"]["response"]["body"]["instructions"] == "Answer briefly."
    assert got["chat"]["response"]["body"]["metadata"] == {"k": "v"}
    body = got["logprobs"]["response"]["body"]  # include asks for them, as in OpenAI's Responses API
    logprobs = body["output"][0]["content"][0]["logprobs"]
    assert len(logprobs) == body["usage"]["output_tokens"] and all(len(lp["top_logprobs"]) == 2 for lp in logprobs)
    finished = 0
    for i in range(6):
        body = got[f"schema-{i}"]["response"]["body"]
        text = body["output"][0]["content"][0]["text"]
        if body["status"] == "completed":
            finished += 1
            assert json.loads(text)["label"] in ("spam", "ham")
    assert finished >= 4  # whitespace-free grammar: a closed schema finishes well within 24 tokens
