"""Tool calls on the real engine: the tiny model's template renders tools, vLLM constrains and parses the calls."""

from __future__ import annotations

import json

import pytest
from conftest import MODEL_DIR
from soak import submit
from test_warm_engine import outputs

from dropbatch.models import BatchStatus

pytestmark = pytest.mark.e2e

MODEL = "dropbatch-tiny"
# strict: vLLM (like OpenAI) pins a call's arguments to the schema only for strict tools;
# a non-strict tool's call envelope is constrained, its arguments are free JSON.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "strict": True, "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"], "additionalProperties": False}}}
TURNS = [
    {"role": "system", "content": "Use the tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def finishing_bias(model_dir) -> dict[str, int]:
    """logit_bias that lets the random-weight model finish a constrained call: no whitespace-only tokens
    (vLLM's tool grammar allows free whitespace inside the arguments), and end-of-turn whenever the grammar
    allows it. A trained model needs neither; the grammar still decides every other token."""
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    bias = {str(i): -100 for token, i in vocab.items() if token and set(token) <= set("ĠĊĉč")}
    return {**bias, str(vocab["<|im_end|>"]): 100}


def line(custom_id: str, **body) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Weather in Oslo?"}], "max_tokens": 128, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_tool_choice_required_and_named_come_back_as_tool_calls(stack):
    stack.ctx.tenants.create("e2e-tools", "enterprise")
    bias = finishing_bias(MODEL_DIR)
    lines = [
        line("required", tools=[WEATHER, TIME], tool_choice="required", logit_bias=bias),
        line("named", tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
             logit_bias=bias),
        line("single", tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, logit_bias=bias),
        line("auto", tools=[WEATHER], tool_choice="auto", seed=3, temperature=1),
        line("history", tools=[WEATHER], messages=TURNS),
        line("none", tools=[WEATHER], tool_choice="none"),
        line("plain"),
    ]
    ref = submit(stack.ctx, "e2e-tools", "tools", lines)
    stack.drain()
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    got = outputs(stack, record)
    for custom_id, answer in got.items():
        assert answer["error"] is None and answer["response"]["status_code"] == 200, (custom_id, answer)
    bodies = {cid: answer["response"]["body"] for cid, answer in got.items()}

    def calls(custom_id: str) -> list[dict]:
        return bodies[custom_id]["choices"][0]["message"].get("tool_calls") or []  # vLLM leaves out an empty list

    required = calls("required")
    assert required and {c["function"]["name"] for c in required} <= {"get_weather", "get_time"}
    for call in required:
        assert call["type"] == "function" and call["id"]
        arguments = json.loads(call["function"]["arguments"])
        assert set(arguments) == ({"city"} if call["function"]["name"] == "get_weather" else {"zone"})
    named = calls("named")
    assert [c["function"]["name"] for c in named] == ["get_time"]
    assert json.loads(named[0]["function"]["arguments"])["zone"] in ("UTC", "CET")
    assert len(calls("single")) == 1
    for custom_id in ("required", "single"):
        assert bodies[custom_id]["choices"][0]["finish_reason"] == "tool_calls"
    assert not calls("none")  # tool_choice none: plain text, no calls
    for custom_id in ("auto", "history"):  # random weights rarely write <tool_call>: the template still renders
        assert bodies[custom_id]["usage"]["prompt_tokens"] > 0
    # The tool list is in the prompt: the template rendered it (the same user message without tools is short).
    assert bodies["auto"]["usage"]["prompt_tokens"] > bodies["plain"]["usage"]["prompt_tokens"] + 50
