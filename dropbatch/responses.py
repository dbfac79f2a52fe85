"""What a ``/v1/responses`` request line may hold: OpenAI's Responses fields this deployment serves.

Lines are answered by vLLM's own ``OpenAIServingResponses`` in the warm engine.
A batch has no response store and no hosted tools, so what needs them
(``previous_response_id``, ``store: true``, ``background``, built-in tools,
``include`` other than the output's logprobs, ``reasoning``, ``prompt`` templates,
``truncation: auto``) is refused
at admission naming the field, rather than silently ignored as vLLM would.
"""

from __future__ import annotations

from typing import Any

from dropbatch.fields import (
    INT32_MAX,
    Check,
    array_of,
    boolean,
    fail,
    fields,
    function_name,
    integer,
    json_object,
    kind,
    metadata,
    number,
    one_of,
    string,
)

RESPONSES = "/v1/responses"
MEDIA_PARTS = ("input_image", "input_file", "input_audio")


def _part(value: Any, param: str) -> None:
    json_object(value, param)
    part = value.get("type")
    one_of("input_text", "output_text", "refusal", *MEDIA_PARTS)(part, f"{param}.type")
    if part in MEDIA_PARTS:
        fail(f"{param}.type", f"is {part!r}: this deployment serves a text model, so only text parts are accepted.",
             "unsupported_content_type")
    name = "refusal" if part == "refusal" else "text"
    fields(value, param, {"type": string, name: string, "annotations": array_of(json_object)}, (name,))


def _content(value: Any, param: str) -> None:
    if not isinstance(value, str):
        array_of(_part, min_items=1)(value, param)


_MESSAGE = {"type": one_of("message"), "role": one_of("user", "assistant", "system", "developer"),
            "content": _content, "id": string, "status": string}


def _item(value: Any, param: str) -> None:
    """An input item: a message (type optional), or another item type vLLM's request model checks."""
    if not isinstance(value, dict):
        fail(param, f"must be an input item object, not {kind(value)}.")
    if value.get("type", "message") == "message":
        fields(value, param, _MESSAGE, ("role", "content"))
    else:
        one_of("function_call", "function_call_output")(value.get("type"), f"{param}.type")


def _input(value: Any, param: str) -> None:
    if isinstance(value, str):
        if not value:
            fail(param, "must not be empty.")
        return
    array_of(_item, min_items=1)(value, param)


def _format(value: Any, param: str) -> None:
    json_object(value, param)
    one_of("text", "json_object", "json_schema")(value.get("type"), f"{param}.type")
    if value["type"] != "json_schema":
        fields(value, param, {"type": string})
        return
    schema = {"type": string, "name": function_name, "description": string, "schema": json_object, "strict": boolean}
    fields(value, param, schema, ("name", "schema"))


def _text(value: Any, param: str) -> None:
    fields(value, param, {"format": _format, "verbosity": one_of("medium")})


def _tool(value: Any, param: str) -> None:
    json_object(value, param)
    if value.get("type") != "function":
        fail(f"{param}.type", "must be 'function': hosted tools (web search, file search …) do not run in batches.",
             "unsupported_parameter")
    function = {"type": string, "name": function_name, "description": string, "parameters": json_object,
                "strict": boolean}
    fields(value, param, function, ("name",))


def _tool_choice(value: Any, param: str) -> None:
    if isinstance(value, str):
        one_of("none", "auto", "required")(value, param)
        return
    fields(value, param, {"type": one_of("function"), "name": function_name}, ("type", "name"))


# What ``include`` may ask for: the engine adds the output's logprobs; the rest needs hosted tools, images or reasoning.
INCLUDABLE = ("message.output_text.logprobs",)


def _include(value: Any, param: str) -> None:
    """``include`` may ask for the output's logprobs (``top_logprobs`` alternatives); nothing else is served."""
    array_of(string)(value, param)
    for index, item in enumerate(value):
        if item not in INCLUDABLE:
            fail(f"{param}[{index}]", f"is {item[:64]!r}, which this deployment does not serve; only "
                 f"{', '.join(repr(i) for i in INCLUDABLE)} is.", "unsupported_parameter")


def _refused(why: str) -> Check:
    def check(value: Any, param: str) -> None:
        fail(param, why, "unsupported_parameter")

    return check


def _only(neutral: Any, why: str) -> Check:
    """Valid only with the value that changes nothing here."""

    def check(value: Any, param: str) -> None:
        if type(value) is not type(neutral) or value != neutral:
            fail(param, why, "unsupported_parameter")

    return check


def _one_of(neutral: tuple[str, ...], why: str) -> Check:
    """Valid only with one of the values that change nothing here."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, str) or value not in neutral:
            fail(param, why, "unsupported_parameter")

    return check


NO_STORE = "needs stored responses, which a batch does not keep; remove it."

RESPONSES_RULES: dict[str, Check] = {
    "model": string,
    "input": _input,
    "instructions": string,
    "max_output_tokens": integer(1, INT32_MAX),
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "top_logprobs": integer(0, 20),
    "text": _text,
    "tools": array_of(_tool, max_items=128),
    "tool_choice": _tool_choice,
    "parallel_tool_calls": boolean,
    "metadata": metadata,
    "user": string,
    "service_tier": _one_of(("auto", "default"), "is valid in OpenAI's API but not served by this deployment; remove it."),
    "safety_identifier": string,
    "prompt_cache_key": string,
    "prompt_cache_retention": _one_of(("in_memory",), "'24h' is not served: the prefix cache keeps what fits in memory."),
    "stream_options": _refused("applies only to streams, and batch results are files; remove it."),
    "stream": _only(False, "must be false or absent: batch results are files, not streams."),
    "store": _only(False, "is not honoured: a batch keeps no responses to retrieve later; set it to false."),
    "background": _only(False, "must be false or absent: every batch line already runs in the background."),
    "truncation": _only("disabled", "'auto' is not served: a too-long input is an error line."),
    "previous_response_id": _refused(NO_STORE),
    "conversation": _refused(NO_STORE),
    "include": _include,
    "reasoning": _refused("is valid in OpenAI's API but the served models do not reason; remove it."),
    "prompt": _refused("prompt templates are stored objects, which this deployment has none of; remove it."),
    "max_tool_calls": _refused("is valid in OpenAI's API but not served by this deployment; remove it."),
}
