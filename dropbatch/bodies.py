"""What a request body may hold, per endpoint: OpenAI's documented types and ranges, in one table.

``check_body`` runs at admission (the watcher, ``/v1/batches/validate``, the
cost estimate) and again in the runner. Three outcomes for a field:

- not in the endpoint's table → ``unknown_parameter`` (OpenAI rejects unknown
  parameters too);
- the wrong type or out of range → ``invalid_body``;
- valid for OpenAI but listed in ``dropbatch.unserved.NOT_YET_SERVED`` with a
  value the engine would not honour → ``unsupported_parameter``.

Null counts as absent for optional fields, as in OpenAI's API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dropbatch.fields import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    Check,
    array_of,
    boolean,
    fail,
    fields,
    function_name,
    integer,
    is_integer,
    json_object,
    kind,
    metadata,
    number,
    one_of,
    positive_number,
    string,
)
from dropbatch.messages import check_messages
from dropbatch.responses import RESPONSES, RESPONSES_RULES
from dropbatch.settings import Settings
from dropbatch.unserved import NOT_YET_SERVED, REFUSED_UNTYPED, refuse_tools, served

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs in one embeddings request
MAX_STOP_SEQUENCES = 4

@dataclass(frozen=True)
class BodyLimits:
    """What the deployment bounds: the model's context, in tokens (None: unknown, so a 32-bit cap),
    and whether the engine parses tool calls (``DROPBATCH_TOOL_CALL_PARSER``)."""

    max_model_len: int | None = None
    tool_calls: bool = True

    @property
    def max_tokens(self) -> int:
        return self.max_model_len or INT32_MAX


def body_limits(settings: Settings) -> BodyLimits:
    return BodyLimits(max_model_len=settings.engine.max_model_len,
                      tool_calls=settings.engine.tool_call_parser is not None)


# -- field rules ----------------------------------------------------------------------------


def _stop(value: Any, param: str) -> None:
    if isinstance(value, str):
        return
    array_of(string, max_items=MAX_STOP_SEQUENCES)(value, param)


def _logit_bias(value: Any, param: str) -> None:
    json_object(value, param)
    for token, bias in value.items():
        if not token.isascii() or not token.isdigit() or len(token) > 10:
            fail(f"{param}.{token[:20]}", "must be a token id (digits).")
        number(-100, 100)(bias, f"{param}.{token}")


def _response_format(value: Any, param: str) -> None:
    json_object(value, param)
    one_of("text", "json_object", "json_schema")(value.get("type"), f"{param}.type")
    if value["type"] != "json_schema":
        fields(value, param, {"type": string})
        return
    schema = {"name": function_name, "description": string, "schema": json_object, "strict": boolean}
    fields(value, param, {"type": string, "json_schema": lambda v, p: fields(v, p, schema, ("name",))}, ("json_schema",))


_FUNCTION = {"name": function_name, "description": string, "parameters": json_object, "strict": boolean}


def _tool(value: Any, param: str) -> None:
    fields(value, param, {"type": one_of("function"), "function": lambda v, p: fields(v, p, _FUNCTION, ("name",))}, ("type", "function"))


def _tool_choice(value: Any, param: str) -> None:
    if isinstance(value, str):
        one_of("none", "auto", "required")(value, param)
        return
    named = {"name": function_name}
    fields(value, param, {"type": one_of("function"), "function": lambda v, p: fields(v, p, named, ("name",))}, ("type", "function"))


def _stream(value: Any, param: str) -> None:
    boolean(value, param)
    if value:
        fail(param, "must be false or absent: batch results are files, not streams.")


def _token_ids(value: Any, param: str) -> None:
    array_of(integer(0, INT32_MAX), min_items=1)(value, param)


def _prompt(value: Any, param: str) -> None:
    """A string, strings, token ids, or lists of token ids; the engine serves one text prompt."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        fail(param, f"must be a string or a non-empty array of strings or token ids, not {kind(value)}.")
    if all(isinstance(p, str) for p in value):
        if len(value) > 1:
            served("prompt[]", value, param, "with several prompts ")
        return
    if not all(is_integer(p) for p in value):
        array_of(_token_ids)(value, param)
    else:
        _token_ids(value, param)
    served("prompt[]", value, param, "as token ids ")


def _embedding_input(value: Any, param: str) -> None:
    if isinstance(value, str):
        if not value:
            fail(param, "must not be empty.")
        return
    if not isinstance(value, list) or not value:
        fail(param, "must be a non-empty string or a non-empty array of strings or token ids.")
    if len(value) > MAX_EMBEDDING_INPUTS:
        fail(param, f"holds {len(value)} inputs; at most {MAX_EMBEDDING_INPUTS} are allowed per request.")
    if all(isinstance(v, str) for v in value):
        for index, text in enumerate(value):
            if not text:
                fail(f"{param}[{index}]", "must not be empty.")
        return
    if all(is_integer(v) for v in value):
        _token_ids(value, param)
    else:
        array_of(_token_ids)(value, param)
    served("input[]", value, param, "as token ids ")


_SAMPLING: dict[str, Check] = {
    "model": string,
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "n": integer(1, 128),
    "seed": integer(INT64_MIN, INT64_MAX),
    "stop": _stop,
    "logit_bias": _logit_bias,
    "user": string,
    "stream": _stream,
    "stream_options": json_object,
    # vLLM's own extensions, which the engine passes on (vLLM's SamplingParams ranges)
    "top_k": integer(-1, INT32_MAX),
    "min_p": number(0, 1),
    "min_tokens": integer(0, INT32_MAX),
    "ignore_eos": boolean,
    "repetition_penalty": positive_number,
}


def _refused_anyway(value: Any, param: str) -> None:
    """No type check: ``served`` refuses every value of these fields."""


RULES: dict[str, dict[str, Check]] = {
    CHAT: {
        **_SAMPLING,
        "messages": check_messages,
        "max_tokens": integer(1, INT64_MAX),  # and within the model's context: see check_body
        "max_completion_tokens": integer(1, INT64_MAX),
        "logprobs": boolean,
        "top_logprobs": integer(0, 20),
        "response_format": _response_format,
        "tools": array_of(_tool, max_items=128),
        "tool_choice": _tool_choice,
        "parallel_tool_calls": boolean,
        "metadata": metadata,
        "store": boolean,
        "modalities": array_of(one_of("text", "audio")),
        "service_tier": one_of("auto", "default", "flex", "scale", "priority"),
        # identifiers and a cache hint that change no answer (like ``user``); vLLM caches shared prefixes anyway
        "safety_identifier": string,
        "prompt_cache_key": string,
        "prompt_cache_retention": one_of("in_memory", "24h"),
        **{name: _refused_anyway for name in REFUSED_UNTYPED},
    },
    COMPLETIONS: {
        **_SAMPLING,
        "prompt": _prompt,
        "max_tokens": integer(1, INT64_MAX),
        "logprobs": integer(0, 5),
        "echo": boolean,
        "best_of": integer(0, 20),
        "suffix": string,
    },
    EMBEDDINGS: {
        "model": string,
        "input": _embedding_input,
        "encoding_format": one_of("float", "base64"),
        "dimensions": integer(1, INT32_MAX),
        "user": string,
    },
}
RULES[RESPONSES] = RESPONSES_RULES
REQUIRED = {CHAT: "messages", COMPLETIONS: "prompt", EMBEDDINGS: "input", RESPONSES: "input"}
_BUDGETS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})
_UNSERVED = frozenset(NOT_YET_SERVED)


def check_body(body: Mapping[str, Any], endpoint: str, limits: BodyLimits) -> None:
    """Every field of ``body`` against the endpoint's rules; raises ``InvalidRequest`` naming the field."""
    required = REQUIRED[endpoint]
    if body.get(required) is None:
        fail(f"body.{required}", f"is required for {endpoint}.", "missing_required_parameter")
    rules = RULES[endpoint]
    for name, value in body.items():
        param = "body." + name
        if name not in rules:
            fail(param, f"is not a parameter of {endpoint}.", "unknown_parameter")
        if value is None:
            continue
        rules[name](value, param)
        if name in _BUDGETS and value > limits.max_tokens:
            # a budget past the model's context can never be spent
            fail(param, f"must be at most the model's context length, {limits.max_tokens} tokens; it is {value}.")
    budget = body.get("max_completion_tokens") or body.get("max_tokens")
    if body.get("min_tokens") is not None and budget is not None and body["min_tokens"] > budget:
        fail("body.min_tokens", "must not be more than the maximum tokens.")
    if endpoint == CHAT and body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        fail("body.top_logprobs", "needs body.logprobs set to true.")
    if endpoint == COMPLETIONS and body.get("best_of") is not None and body["best_of"] < (body.get("n") or 1):
        fail("body.best_of", "must be at least body.n.")
    for name in sorted(_UNSERVED.intersection(body)):
        served(name, body[name], f"body.{name}")
    if endpoint in (CHAT, RESPONSES) and not limits.tool_calls:
        refuse_tools(body)


def request_cost(body: Mapping[str, Any], endpoint: str) -> int:
    """What one valid line asks the engine for: its embedding inputs, or its choices (n, best_of) per prompt."""
    if endpoint == EMBEDDINGS:
        value = body["input"]
        return len(value) if isinstance(value, list) and not all(is_integer(v) for v in value) else 1
    choices = max(body.get("n") or 1, body.get("best_of") or 1)
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and not all(is_integer(p) for p in prompt) else 1
    return choices * prompts
