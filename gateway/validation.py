"""POST /v1/batches/validate (the original design's API): check a batch before submitting it.

``{json_data, max_batch_size}`` → ``{is_valid, errors, warnings, estimated_items, format}``.
``json_data`` may be the inline body (``{"input": [{"prompt": ...}], "model", ...}``),
a bare list of ``{"prompt"}`` items, a list of OpenAI request lines, or OpenAI JSONL
text. Inline items past ``max_batch_size`` (or the 1000-item inline limit) are a
warning, since they would be truncated; a JSONL file is never truncated, so more
lines than ``max_batch_size`` is an error. JSONL lines are checked with the same
``parse_request_line`` the watcher uses, against the served model.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.bodies import body_limits, check_body
from dropbatch.errors import InvalidRequest, NotFound
from dropbatch.jsonl import first_url, iter_lines, parse_request_line
from dropbatch.settings import Settings
from gateway.auth import Principal, tenant_route
from gateway.compat import CHAT, inline_lines, resolve_model
from gateway.params import json_object, validate
from gateway.schemas import MAX_INLINE_ITEMS, InlineBatchCreate, ValidateRequest
from gateway.state import gateway_of

MAX_LISTED_ERRORS = 100


def _schema_messages(exc: ValidationError, limit: int = 20) -> list[str]:
    messages = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        messages.append(f"{where}: {error.get('msg')}")
    return messages


def _validate_items(settings: Settings, data: dict[str, Any], max_batch_size: int, report: dict[str, Any]) -> None:
    try:
        body = InlineBatchCreate.model_validate(data)
    except ValidationError as exc:
        report["errors"] += _schema_messages(exc)
        return
    try:
        resolve_model(settings, body.model)
    except NotFound as exc:
        report["errors"].append(f"model: {exc.message}")
    else:
        # Items differ only in their prompt text: the first one's request line stands for all.
        lines, _ = inline_lines(
            settings, body.input[:1], model=body.model, max_tokens=body.max_tokens, temperature=body.temperature
        )
        try:
            check_body(lines[0]["body"], CHAT, body_limits(settings))
        except InvalidRequest as exc:
            report["errors"].append(f"{(exc.param or 'body').removeprefix('body.')}: {exc.message}")
    ids = [item.custom_id for item in body.input if item.custom_id is not None]
    if len(ids) != len(set(ids)):
        report["errors"].append("input: custom_id values must be unique.")
    n = len(body.input)
    if n > MAX_INLINE_ITEMS:
        report["warnings"].append(f"The input has {n} items; only the first {MAX_INLINE_ITEMS} would be submitted.")
    if n > max_batch_size:
        report["warnings"].append(f"The input has {n} items, more than max_batch_size ({max_batch_size}).")
    report["estimated_items"] = min(n, max_batch_size, MAX_INLINE_ITEMS)


def _validate_jsonl(settings: Settings, text: str, max_batch_size: int, report: dict[str, Any]) -> None:
    lines = list(iter_lines([text.encode("utf-8")], max_line_bytes=settings.limits.max_line_bytes))
    endpoint = first_url(lines)
    seen: set[str] = set()
    valid = 0
    for raw in lines:
        try:
            request = parse_request_line(
                raw, endpoint=endpoint or CHAT, model=settings.engine.model_name, limits=body_limits(settings)
            )
        except InvalidRequest as exc:
            if len(report["errors"]) < MAX_LISTED_ERRORS:
                report["errors"].append(
                    exc.message if exc.message.startswith("Line") else f"Line {raw.number}: {exc.message}"
                )
            continue
        if request.custom_id in seen:
            report["errors"].append(f"Line {raw.number}: custom_id {request.custom_id!r} appears more than once.")
            continue
        seen.add(request.custom_id)
        valid += 1
    if not lines:
        report["errors"].append("The input has no request lines.")
    if len(lines) > max_batch_size:
        report["errors"].append(f"The input has {len(lines)} request lines; max_batch_size is {max_batch_size}.")
    if len(lines) > settings.limits.max_file_lines:
        report["errors"].append(f"A batch may hold at most {settings.limits.max_file_lines} requests.")
    report["estimated_items"] = valid


def validate_input(settings: Settings, json_data: Any, max_batch_size: int) -> dict[str, Any]:
    """Check a batch before submitting it: the inline form, a list of items, or OpenAI JSONL text."""
    report: dict[str, Any] = {"is_valid": False, "errors": [], "warnings": [], "estimated_items": 0}
    data = json_data
    if isinstance(json_data, str):
        try:
            data = json.loads(json_data)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, (dict, list)) or (isinstance(data, dict) and "custom_id" in data):
            report["format"] = "jsonl"
            _validate_jsonl(settings, json_data, max_batch_size, report)
            report["is_valid"] = not report["errors"]
            return report
    if isinstance(data, list):
        if data and all(isinstance(d, dict) and "custom_id" in d for d in data):
            report["format"] = "jsonl"
            text = "\n".join(json.dumps(d) for d in data)
            _validate_jsonl(settings, text, max_batch_size, report)
            report["is_valid"] = not report["errors"]
            return report
        data = {"input": data}
    report["format"] = "inline"
    _validate_items(settings, data, max_batch_size, report)
    report["is_valid"] = not report["errors"]
    return report


@tenant_route
async def validate_batch(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    body = validate(ValidateRequest, await json_object(request))
    return JSONResponse(await run_in_threadpool(validate_input, gw.settings, body.json_data, body.max_batch_size))


ROUTES = [Route("/v1/batches/validate", validate_batch, methods=["POST"])]
