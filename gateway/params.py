"""Reading request bodies and query strings, with the 400/413/422 rule of ``gateway.errors``."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive

from dropbatch.errors import InvalidRequest, NotFound, PayloadTooLarge, UnprocessableRequest
from dropbatch.jsonl import is_unicode_text
from gateway.errors import schema_error
from gateway.schemas import ID_PATTERN

M = TypeVar("M", bound=BaseModel)

MAX_JSON_BODY_BYTES = 32 * 1024 * 1024  # inline compat batches carry their prompts in the body
_ID = re.compile(ID_PATTERN)


def is_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


def path_id(request: Request, name: str) -> str:
    """A path parameter that names an object; one that cannot be an id is simply not found."""
    value = request.path_params[name]
    if not is_id(value):
        raise NotFound(f"No object found with id '{value[:128]}'.", param=name)
    return value


def limited_receive(receive: Receive, limit: int, what: str) -> Receive:
    """``receive`` that raises ``PayloadTooLarge`` once more than ``limit`` body bytes arrived."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"The {what} is larger than the limit of {limit} bytes.")
        return message

    return wrapped


def check_content_length(request: Request, limit: int, what: str) -> None:
    raw = request.headers.get("content-length")
    if raw is not None and raw.isdigit() and int(raw) > limit:
        raise PayloadTooLarge(f"The {what} is {int(raw)} bytes; the limit is {limit} bytes.")


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object (400 if it is not one; ``{}`` for an empty body when ``optional``)."""
    check_content_length(request, MAX_JSON_BODY_BYTES, "request body")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than the limit of {MAX_JSON_BODY_BYTES} bytes.")
        chunks.append(chunk)
    body = b"".join(chunks)
    if optional and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if b"\\u" in body and not is_unicode_text(data):
        raise InvalidRequest(
            "The JSON body escapes an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode text.",
            code="invalid_json",
        )
    return data


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise schema_error(exc) from None


def query_int(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UnprocessableRequest(f"Invalid value for '{name}': expected an integer.", param=name) from None
    if not low <= value <= high:
        raise UnprocessableRequest(f"Invalid value for '{name}': must be between {low} and {high}.", param=name)
    return value


def query_choice(request: Request, name: str, *, default: str, choices: tuple[str, ...]) -> str:
    value = request.query_params.get(name, default)
    if value not in choices:
        raise UnprocessableRequest(f"Invalid value for '{name}': must be one of {', '.join(choices)}.", param=name)
    return value


def query_str(request: Request, name: str, *, max_length: int = 256) -> str | None:
    value = request.query_params.get(name)
    if value is not None and (not value or len(value) > max_length):
        raise UnprocessableRequest(f"Invalid value for '{name}'.", param=name)
    return value


def query_cursor(request: Request, name: str = "after") -> str | None:
    """A pagination cursor: an object id (422 if it cannot be one)."""
    value = request.query_params.get(name)
    if value is not None and not is_id(value):
        raise UnprocessableRequest(f"Invalid value for '{name}': expected an object id.", param=name)
    return value
