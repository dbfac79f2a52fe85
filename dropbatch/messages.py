"""Chat messages as OpenAI documents them: roles, content parts, and what each role may carry.

This deployment serves text models: content parts other than text (and an
assistant's refusal) are refused naming the part. Fields the engine would drop
(a message's ``function_call``, ``audio`` …) pass the type check and are then
refused through ``dropbatch.unserved``; ``tool_calls`` and tool messages are served.
"""

from __future__ import annotations

from typing import Any

from dropbatch.fields import Check, array_of, fail, fields, function_name, kind, one_of, string
from dropbatch.unserved import served

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MEDIA_PARTS = ("image_url", "input_audio", "file")


def _text_part(value: Any, param: str, allowed: tuple[str, ...] = ("text",)) -> None:
    if not isinstance(value, dict):
        fail(param, f"must be a content part object, not {kind(value)}.")
    part = value.get("type")
    one_of(*allowed)(part, f"{param}.type")
    if part in MEDIA_PARTS:
        fail(
            f"{param}.type",
            f"is {part!r}: this deployment serves a text model, so only text content parts are accepted.",
            "unsupported_content_type",
        )
    name = "refusal" if part == "refusal" else "text"
    fields(value, param, {"type": string, name: string}, (name,))


def _content(allowed: tuple[str, ...], *, optional: bool = False) -> Check:
    def check(value: Any, param: str) -> None:
        if value is None and optional:
            return
        if isinstance(value, str):
            return
        if not isinstance(value, list):
            fail(param, f"must be a string or an array of content parts, not {kind(value)}.")
        array_of(lambda v, p: _text_part(v, p, allowed), min_items=1)(value, param)

    return check


_FUNCTION_CALL = {"name": function_name, "arguments": string}
_TOOL_CALL = {
    "id": string,
    "type": one_of("function"),
    "function": lambda v, p: fields(v, p, _FUNCTION_CALL, ("name", "arguments")),
}
_AUDIO_REF = {"id": string}

# role → (its fields, the fields it must carry)
_ROLE_FIELDS: dict[str, tuple[dict[str, Check], tuple[str, ...]]] = {
    "system": ({"content": _content(("text",)), "name": string}, ("content",)),
    "developer": ({"content": _content(("text",)), "name": string}, ("content",)),
    "user": ({"content": _content(("text", *MEDIA_PARTS)), "name": string}, ("content",)),
    "assistant": (
        {
            "content": _content(("text", "refusal"), optional=True),
            "name": string,
            "refusal": string,
            "tool_calls": array_of(lambda v, p: fields(v, p, _TOOL_CALL, ("id", "type", "function"))),
            "function_call": lambda v, p: fields(v, p, _FUNCTION_CALL, ("name", "arguments")),
            "audio": lambda v, p: fields(v, p, _AUDIO_REF, ("id",)),
        },
        (),
    ),
    "tool": ({"content": _content(("text",)), "tool_call_id": string}, ("content", "tool_call_id")),
    "function": ({"content": _content((), optional=True), "name": function_name}, ("name",)),
}


_ROLE = one_of(*ROLES)
# role → every field its message may carry (role included), and the ones it must carry; built once
_MESSAGE_FIELDS = {role: ({"role": string, **known}, required) for role, (known, required) in _ROLE_FIELDS.items()}
_SERVED_FIELDS = ("name", "tool_calls", "tool_call_id", "function_call", "audio")


def check_message(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        fail(param, f"must be a message object, not {kind(value)}.")
    role = value.get("role")
    _ROLE(role, f"{param}.role")
    known, required = _MESSAGE_FIELDS[role]
    fields(value, param, known, required)
    if role == "assistant" and value.get("content") is None and not (value.get("tool_calls") or value.get("function_call")):
        fail(f"{param}.content", "is required unless the assistant message has tool_calls.", "missing_required_parameter")
    if len(value) > 2 or "content" not in value:  # role + content (most messages): nothing to refuse
        for name in _SERVED_FIELDS:
            if name in value:
                served(f"messages[].{name}", value[name], f"{param}.{name}")


def check_messages(value: Any, param: str) -> None:
    if not isinstance(value, list) or not value:
        fail(param, f"must be a non-empty array of messages, not {kind(value) if value != [] else 'an empty array'}.")
    for index, message in enumerate(value):
        check_message(message, f"{param}[{index}]")
