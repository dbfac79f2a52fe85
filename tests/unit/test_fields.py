"""The body rules (dropbatch/bodies.py): each field's type and range, what is not yet served, and line cost."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropbatch.bodies import MAX_EMBEDDING_INPUTS, RULES, BodyLimits, request_cost
from dropbatch.errors import InvalidRequest
from dropbatch.jsonl import RawLine, parse_request_line
from dropbatch.unserved import NOT_YET_SERVED

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
MODEL = "dropbatch-tiny"
CONTEXT = 512
BASE = {
    CHAT: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    COMPLETIONS: {"model": MODEL, "prompt": "hi"},
    EMBEDDINGS: {"model": MODEL, "input": "hi"},
}


def parse(endpoint: str, fields: dict[str, Any], number: int = 4):
    body = {**BASE[endpoint], **fields}
    data = json.dumps({"custom_id": "c", "method": "POST", "url": endpoint, "body": body}).encode()
    return parse_request_line(
        RawLine(number, 0, len(data), data), endpoint=endpoint, model=MODEL, limits=BodyLimits(CONTEXT)
    )


def refused(endpoint: str, fields: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(endpoint, fields)
    error = info.value
    assert error.line == 4 and error.message.startswith("Line 4: ")
    assert error.param and error.param in error.message  # every error names the field
    return error


SAMPLING_BAD = [
    ("temperature", "hot"),
    ("temperature", True),
    ("temperature", -0.1),
    ("temperature", 2.01),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("temperature", 10**400),
    ("top_p", [1]),
    ("top_p", 1.5),
    ("top_p", False),
    ("presence_penalty", -2.5),
    ("frequency_penalty", 3),
    ("frequency_penalty", "0"),
    ("seed", 2**63),
    ("seed", 1.0),
    ("seed", True),
    ("stop", {"a": 1}),
    ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", [1]),
    ("stop", 5),
    ("logit_bias", {"abc": 1}),
    ("logit_bias", {"12": 101}),
    ("logit_bias", {"12": "1"}),
    ("logit_bias", [1]),
    ("user", 5),
    ("n", 0),
    ("n", 129),
    ("n", 1.0),
    ("n", True),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", CONTEXT + 1),
    ("max_tokens", 10**400),
    ("max_tokens", 1.5),
    ("max_tokens", True),
    ("max_tokens", "5"),
    ("stream", True),
    ("stream", "false"),
    ("top_k", -2),
    ("min_p", 1.5),
    ("repetition_penalty", 0),
    ("repetition_penalty", True),
    ("min_tokens", -1),
    ("ignore_eos", 1),
]


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("name, value", SAMPLING_BAD, ids=[f"{n}={v!r}"[:40] for n, v in SAMPLING_BAD])
def test_sampling_fields_are_typed_and_ranged(endpoint: str, name: str, value: Any) -> None:
    error = refused(endpoint, {name: value})
    assert error.code == "invalid_body"
    assert error.param == f"body.{name}" or error.param.startswith((f"body.{name}.", f"body.{name}["))


CHAT_BAD = [
    ({"messages": []}, "invalid_body", "body.messages"),
    ({"messages": {"role": "user"}}, "invalid_body", "body.messages"),
    ({"messages": [{"role": "god", "content": "x"}]}, "invalid_body", "body.messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_body", "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "invalid_body", "body.messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "mood": "happy"}]}, "unknown_parameter", "body.messages[0].mood"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "missing_required_parameter", "body.messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "invalid_body", "body.messages[0].content[0].type"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "unsupported_content_type",
        "body.messages[0].content[0].type",
    ),
    (
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "input_audio"}]}]},
        "unsupported_content_type",
        "body.messages[1].content[0].type",
    ),
    ({"messages": [{"role": "system", "content": [{"type": "file"}]}]}, "invalid_body", "body.messages[0].content[0].type"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "missing_required_parameter", "body.messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant"}]}, "missing_required_parameter", "body.messages[0].content"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "1"}]}]}, "missing_required_parameter", "body.messages[0].tool_calls[0].type"),
    ({"logprobs": "yes"}, "invalid_body", "body.logprobs"),
    ({"top_logprobs": 21, "logprobs": True}, "invalid_body", "body.top_logprobs"),
    ({"top_logprobs": 2}, "invalid_body", "body.top_logprobs"),
    ({"max_completion_tokens": CONTEXT + 1}, "invalid_body", "body.max_completion_tokens"),
    ({"response_format": {"type": "xml"}}, "invalid_body", "body.response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "missing_required_parameter", "body.response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}, "invalid_body", "body.response_format.json_schema.schema"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "invalid_body", "body.tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "invalid_body", "body.tools[0].function.name"),
    ({"tool_choice": "sometimes"}, "invalid_body", "body.tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "has space"}}}, "invalid_body", "body.tool_choice.function.name"),
    ({"service_tier": "flex"}, "unsupported_parameter", "body.service_tier"),
    ({"prompt_cache_retention": "24h"}, "unsupported_parameter", "body.prompt_cache_retention"),
    ({"prompt_cache_retention": "forever"}, "invalid_body", "body.prompt_cache_retention"),
    ({"safety_identifier": 5}, "invalid_body", "body.safety_identifier"),
    ({"parallel_tool_calls": "no"}, "invalid_body", "body.parallel_tool_calls"),
    ({"metadata": {"k": 1}}, "invalid_body", "body.metadata.k"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "invalid_body", "body.metadata"),
    ({"store": "yes"}, "invalid_body", "body.store"),
    ({"store": True}, "unsupported_parameter", "body.store"),  # nothing would be stored: refused, not dropped
    ({"temprature": 1}, "unknown_parameter", "body.temprature"),
    ({"prompt": "hi"}, "unknown_parameter", "body.prompt"),
    ({"messages": None}, "missing_required_parameter", "body.messages"),
    ({"max_tokens": 5, "min_tokens": 6}, "invalid_body", "body.min_tokens"),
]


@pytest.mark.parametrize("fields, code, param", CHAT_BAD, ids=[p for _, _, p in CHAT_BAD])
def test_chat_rules(fields: dict[str, Any], code: str, param: str) -> None:
    error = refused(CHAT, fields)
    assert (error.code, error.param) == (code, param)


COMPLETIONS_BAD = [
    ({"prompt": 5}, "invalid_body", "body.prompt"),
    ({"prompt": [1, "a"]}, "invalid_body", "body.prompt[0]"),
    ({"prompt": [[1], []]}, "invalid_body", "body.prompt[1]"),
    ({"prompt": [-1]}, "invalid_body", "body.prompt[0]"),
    ({"echo": 1}, "invalid_body", "body.echo"),
    ({"best_of": 21}, "invalid_body", "body.best_of"),
    ({"best_of": 3}, "unsupported_parameter", "body.best_of"),
    ({"suffix": 5}, "invalid_body", "body.suffix"),
    ({"suffix": "end"}, "unsupported_parameter", "body.suffix"),
    ({"suffix": ""}, "unsupported_parameter", "body.suffix"),  # vLLM refuses it too, for a model with no FIM
    ({"logprobs": 6}, "invalid_body", "body.logprobs"),
    ({"logprobs": True}, "invalid_body", "body.logprobs"),
    ({"messages": []}, "unknown_parameter", "body.messages"),
]


@pytest.mark.parametrize("fields, code, param", COMPLETIONS_BAD, ids=[f"{p}-{c}" for _, c, p in COMPLETIONS_BAD])
def test_completions_rules(fields: dict[str, Any], code: str, param: str) -> None:
    error = refused(COMPLETIONS, fields)
    assert (error.code, error.param) == (code, param)


EMBEDDINGS_BAD = [
    ({"input": ""}, "invalid_body", "body.input"),
    ({"input": []}, "invalid_body", "body.input"),
    ({"input": ["a", ""]}, "invalid_body", "body.input[1]"),
    ({"input": ["a", 1]}, "invalid_body", "body.input[0]"),
    ({"input": [[]]}, "invalid_body", "body.input[0]"),
    ({"input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "invalid_body", "body.input"),
    ({"input": ["x"] * 20_000}, "invalid_body", "body.input"),
    ({"encoding_format": "hex"}, "invalid_body", "body.encoding_format"),
    ({"dimensions": 0}, "invalid_body", "body.dimensions"),
    ({"temperature": 1}, "unknown_parameter", "body.temperature"),
]


@pytest.mark.parametrize("fields, code, param", EMBEDDINGS_BAD, ids=[f"{p}-{c}" for _, c, p in EMBEDDINGS_BAD])
def test_embeddings_rules(fields: dict[str, Any], code: str, param: str) -> None:
    error = refused(EMBEDDINGS, fields)
    assert (error.code, error.param) == (code, param)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
TOOL_TURNS = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "content": "sunny", "tool_call_id": "1"},
]


GOOD = [
    (CHAT, {"temperature": 0, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 2.0, "seed": -(2**63)}),
    (CHAT, {"temperature": 2, "max_tokens": CONTEXT, "max_completion_tokens": 1, "n": 1, "stream": False}),
    (CHAT, {"stop": "x", "user": "u-1", "metadata": {"k": "v"}, "store": False, "logprobs": False}),
    (CHAT, {"stop": ["a", "b", "c", "d"], "logit_bias": {}, "response_format": {"type": "text"}}),
    (CHAT, {"tools": [], "tool_choice": "none", "parallel_tool_calls": True, "temperature": None, "max_tokens": None}),
    (CHAT, {"top_k": -1, "min_p": 0.05, "min_tokens": 1, "ignore_eos": False, "repetition_penalty": 1.2}),
    (
        CHAT,
        {
            "messages": [
                {"role": "system", "content": "brief"},
                {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "tool_calls": []},
                {"role": "user", "content": ""},
            ]
        },
    ),
    (COMPLETIONS, {"prompt": ["one"], "echo": False, "best_of": 1, "logprobs": None, "seed": 7}),
    # OpenAI's newer identifiers and cache hint, which change no answer (like user): admitted, as OpenAI's are
    (CHAT, {"safety_identifier": "u-1", "prompt_cache_key": "k", "prompt_cache_retention": "in_memory"}),
    (EMBEDDINGS, {"input": ["a"] * MAX_EMBEDDING_INPUTS, "encoding_format": "float", "user": "u"}),
    # Served by vLLM's own OpenAI layer in the warm engine (no longer refused as not yet served):
    (CHAT, {"n": 2, "temperature": 1, "logprobs": True, "top_logprobs": 3, "logit_bias": {"17": -5}}),
    (CHAT, {"response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "x", "name": "bob"}]}),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                       "strict": True}}}),
    (COMPLETIONS, {"prompt": ["a", "b"], "echo": True, "logprobs": 2}),
    (CHAT, {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}),
    (CHAT, {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    (CHAT, {"tools": TOOLS, "tool_choice": "auto", "messages": TOOL_TURNS}),
    (COMPLETIONS, {"prompt": [[1, 2], [3]], "logprobs": 0}),
    (EMBEDDINGS, {"input": [[1, 2], [3]], "encoding_format": "base64", "dimensions": 64}),
]


@pytest.mark.parametrize("endpoint, fields", GOOD)
def test_valid_bodies_are_admitted(endpoint: str, fields: dict[str, Any]) -> None:
    assert parse(endpoint, fields).body == {**BASE[endpoint], **fields}


TOOLS_OFF = [
    ({"tools": TOOLS}, "body.tools"),
    ({"tool_choice": "required"}, "body.tool_choice"),
    ({"parallel_tool_calls": False}, "body.parallel_tool_calls"),
    ({"messages": TOOL_TURNS}, "body.messages[1].tool_calls"),
    ({"messages": TOOL_TURNS[2:]}, "body.messages[0].tool_call_id"),
]


@pytest.mark.parametrize("fields, param", TOOLS_OFF, ids=[p for _, p in TOOLS_OFF])
def test_tools_are_refused_when_tool_calling_is_off(fields: dict[str, Any], param: str) -> None:
    body = {**BASE[CHAT], **fields}
    data = json.dumps({"custom_id": "c", "method": "POST", "url": CHAT, "body": body}).encode()
    with pytest.raises(InvalidRequest) as info:
        parse_request_line(RawLine(4, 0, len(data), data), endpoint=CHAT, model=MODEL,
                           limits=BodyLimits(CONTEXT, tool_calls=False))
    assert (info.value.code, info.value.param) == ("unsupported_parameter", param)
    assert "DROPBATCH_TOOL_CALL_PARSER" in info.value.message


def test_tools_off_still_admits_what_asks_for_no_tool_call() -> None:
    body = {**BASE[CHAT], "tools": [], "tool_choice": "none", "parallel_tool_calls": True}
    data = json.dumps({"custom_id": "c", "method": "POST", "url": CHAT, "body": body}).encode()
    parsed = parse_request_line(RawLine(4, 0, len(data), data), endpoint=CHAT, model=MODEL,
                                limits=BodyLimits(CONTEXT, tool_calls=False))
    assert parsed.body == body


@pytest.mark.parametrize(
    "endpoint, fields, cost",
    [
        (CHAT, {}, 1),
        (CHAT, {"n": 1}, 1),
        (CHAT, {"n": 4, "temperature": 1}, 4),
        (COMPLETIONS, {"prompt": ["one"]}, 1),
        (EMBEDDINGS, {"input": "one"}, 1),
        (EMBEDDINGS, {"input": ["a", "b", "c"]}, 3),
        (EMBEDDINGS, {"input": ["a"] * MAX_EMBEDDING_INPUTS}, MAX_EMBEDDING_INPUTS),
    ],
)
def test_cost_counts_engine_work(endpoint: str, fields: dict[str, Any], cost: int) -> None:
    assert parse(endpoint, fields).cost == cost


def test_cost_of_fields_not_yet_served_counts_them_too() -> None:
    # Once the engine serves n / best_of / token inputs, the quota already counts them.
    assert request_cost({"messages": [], "n": 5}, CHAT) == 5
    assert request_cost({"prompt": ["a", "b"], "n": 2, "best_of": 3}, COMPLETIONS) == 6
    assert request_cost({"input": [[1], [2], [3]]}, EMBEDDINGS) == 3
    assert request_cost({"input": [1, 2, 3]}, EMBEDDINGS) == 1


def test_not_yet_served_names_only_known_fields() -> None:
    known = set().union(*RULES.values())
    for name in NOT_YET_SERVED:
        top = name.split("[")[0]
        assert top in known, name


def test_unknown_context_still_caps_max_tokens_at_32_bits() -> None:
    data = json.dumps({"custom_id": "c", "method": "POST", "url": CHAT, "body": {**BASE[CHAT], "max_tokens": 2**31}})
    with pytest.raises(InvalidRequest) as info:
        parse_request_line(RawLine(1, 0, len(data), data.encode()), endpoint=CHAT, model=MODEL)
    assert info.value.param == "body.max_tokens"


# -- property: no JSON value in any field raises anything but InvalidRequest ---------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = sorted(set().union(*RULES.values()) | {"unknown"})
MESSAGE_KEYS = ["role", "content", "name", "tool_calls", "tool_call_id", "function_call", "refusal", "audio", "x"]


@settings(max_examples=600, deadline=None, database=None)
@given(
    endpoint=st.sampled_from([CHAT, COMPLETIONS, EMBEDDINGS]),
    name=st.sampled_from(FIELD_NAMES),
    value=JSON_VALUES,
)
def test_any_value_in_any_field_is_admitted_or_invalid_request(endpoint: str, name: str, value: Any) -> None:
    body = {**BASE[endpoint], name: value}
    data = json.dumps({"custom_id": "c", "method": "POST", "url": endpoint, "body": body}).encode()
    try:
        request = parse_request_line(RawLine(2, 0, len(data), data), endpoint=endpoint, model=MODEL, limits=BodyLimits(CONTEXT))
    except InvalidRequest as exc:
        assert exc.line == 2 and exc.param
        return
    assert request.cost >= 1


@settings(max_examples=400, deadline=None, database=None)
@given(
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "god"]),
    message=st.dictionaries(st.sampled_from(MESSAGE_KEYS), JSON_VALUES, max_size=4),
)
def test_any_message_is_admitted_or_invalid_request(role: str, message: dict[str, Any]) -> None:
    body = {**BASE[CHAT], "messages": [{"role": role, **message}]}
    data = json.dumps({"custom_id": "c", "method": "POST", "url": CHAT, "body": body}).encode()
    try:
        parse_request_line(RawLine(2, 0, len(data), data), endpoint=CHAT, model=MODEL, limits=BodyLimits(CONTEXT))
    except InvalidRequest as exc:
        assert exc.line == 2 and exc.param and exc.param.startswith("body.messages")


RESPONSES = "/v1/responses"
BASE[RESPONSES] = {"model": MODEL, "input": "hi"}
SCHEMA_FORMAT = {"type": "json_schema", "name": "c", "strict": True,
                 "schema": {"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": ["a"]}}

RESPONSES_GOOD = [
    {"instructions": "brief", "max_output_tokens": 16, "temperature": 0.5, "top_p": 0.9, "user": "u"},
    {"input": [{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant",
                                                   "content": [{"type": "output_text", "text": "yo"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}], "text": {"format": SCHEMA_FORMAT}},
    {"text": {"format": {"type": "json_object"}}, "metadata": {"k": "v"}, "store": False, "stream": False},
    {"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}], "tool_choice": "required"},
    {"tool_choice": {"type": "function", "name": "f"}, "top_logprobs": 2, "background": False, "truncation": "disabled"},
    {"include": ["message.output_text.logprobs"], "top_logprobs": 2},  # how the Responses API asks for logprobs
    {"service_tier": "default", "safety_identifier": "u-1", "prompt_cache_key": "k", "prompt_cache_retention": "in_memory"},
]


@pytest.mark.parametrize("fields", RESPONSES_GOOD)
def test_responses_bodies_are_admitted(fields: dict[str, Any]) -> None:
    assert parse(RESPONSES, fields).body == {**BASE[RESPONSES], **fields}


RESPONSES_BAD = [
    ({"input": ""}, "invalid_body", "body.input"),
    ({"input": []}, "invalid_body", "body.input"),
    ({"input": [{"role": "god", "content": "x"}]}, "invalid_body", "body.input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "unsupported_content_type", "body.input[0].content[0].type"),
    ({"max_output_tokens": CONTEXT + 1}, "invalid_body", "body.max_output_tokens"),
    ({"text": {"format": {"type": "json_schema", "name": "c"}}}, "missing_required_parameter", "body.text.format.schema"),
    ({"previous_response_id": "resp_1"}, "unsupported_parameter", "body.previous_response_id"),
    ({"store": True}, "unsupported_parameter", "body.store"),
    ({"background": True}, "unsupported_parameter", "body.background"),
    ({"stream": True}, "unsupported_parameter", "body.stream"),
    ({"tools": [{"type": "web_search"}]}, "unsupported_parameter", "body.tools[0].type"),
    ({"reasoning": {"effort": "low"}}, "unsupported_parameter", "body.reasoning"),
    ({"include": ["reasoning.encrypted_content"]}, "unsupported_parameter", "body.include[0]"),
    ({"include": ["message.output_text.logprobs", "file_search_call.results"]}, "unsupported_parameter",
     "body.include[1]"),
    ({"include": "message.output_text.logprobs"}, "invalid_body", "body.include"),
    ({"truncation": "auto"}, "unsupported_parameter", "body.truncation"),
    ({"service_tier": "flex"}, "unsupported_parameter", "body.service_tier"),
    ({"prompt_cache_retention": "24h"}, "unsupported_parameter", "body.prompt_cache_retention"),
    ({"stream_options": {"include_usage": True}}, "unsupported_parameter", "body.stream_options"),
    ({"messages": []}, "unknown_parameter", "body.messages"),
    ({"input": None}, "missing_required_parameter", "body.input"),
]


@pytest.mark.parametrize("fields, code, param", RESPONSES_BAD, ids=[p for _, _, p in RESPONSES_BAD])
def test_responses_rules(fields: dict[str, Any], code: str, param: str) -> None:
    error = refused(RESPONSES, fields)
    assert (error.code, error.param) == (code, param)
