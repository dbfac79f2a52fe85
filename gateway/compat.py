"""The original design's API, kept working on the same machinery as /v1/files + /v1/batches.

- ``POST /v1/batches`` with ``input: [{"prompt": ...}]`` (+ ``model``, ``max_tokens``,
  ``temperature``): each item becomes one ``/v1/chat/completions`` request line
  with a single user message holding the prompt (custom_id ``item-<index>``
  unless the item names one). The lines are stored as an uploaded file for the
  caller and submitted like any batch. More than 1000 items are truncated to the
  first 1000, with a warning in the response's ``warnings``. ``retry_config``
  sets the batch's retry policy, as on the file-based create.
- ``GET /v1/batches/{id}/results``: ``data[]`` of ``{custom_id, input: {prompt},
  output_text, tokens_generated, error}`` in input order, once the batch is
  completed (or cancelled/expired: what finished, the rest with their error).
  Once the batch's output or error file was deleted: 404 ``output_file_deleted``
  naming the file.
- ``POST /v1/batches/validate``: see ``gateway.validation``.
- ``POST /v1/batches/cost-estimate``: see ``gateway.estimate``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.deadlines import DEFAULT_WINDOW
from dropbatch.errors import (
    Conflict,
    NotFound,
    ObjectNotFound,
    OutputFileDeleted,
    UnprocessableRequest,
)
from dropbatch.jsonl import RawLine, aiter_lines, encode
from dropbatch.models import BatchRecord, BatchStatus, FileRecord, RetryConfig, token_counts
from dropbatch.served import check_model
from dropbatch.settings import Settings
from gateway.auth import Principal, tenant_route
from gateway.files import store_upload
from gateway.params import path_id, validate
from gateway.schemas import MAX_INLINE_ITEMS, InlineBatchCreate, InlineItem
from gateway.state import Gateway, gateway_of
from gateway.submit import submit_batch
from gateway.together import in_order

CHAT = "/v1/chat/completions"


RESULT_STATUSES = (BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)


def resolve_model(settings: Settings, model: str | None) -> str:
    return check_model(settings.engine, model)


def inline_lines(
    settings: Settings,
    items: Sequence[InlineItem],
    *,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Chat completion request lines for inline prompts, and the warnings (truncation)."""
    served = resolve_model(settings, model)
    warnings = []
    if len(items) > MAX_INLINE_ITEMS:
        warnings.append(
            f"The input has {len(items)} items; only the first {MAX_INLINE_ITEMS} were submitted "
            f"(at most {MAX_INLINE_ITEMS} inline items per batch; upload a file for more)."
        )
        items = items[:MAX_INLINE_ITEMS]
    lines = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        custom_id = item.custom_id or f"item-{index}"
        if custom_id in seen:
            raise UnprocessableRequest(f"input[{index}].custom_id {custom_id!r} appears more than once.", param="input")
        seen.add(custom_id)
        body: dict[str, Any] = {
            "model": served,
            "messages": [{"role": "user", "content": item.prompt}],
            "max_tokens": max_tokens or settings.engine.default_max_tokens,
        }
        if temperature is not None:
            body["temperature"] = temperature
        lines.append({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})
    return lines, warnings


async def submit_lines(
    gw: Gateway,
    tenant: str,
    lines: list[dict[str, Any]],
    *,
    metadata: dict[str, str] | None,
    filename: str,
    retry_config: RetryConfig | None = None,
    completion_window: str = DEFAULT_WINDOW,
) -> BatchRecord:
    return await submit_batch(
        gw, tenant, store_upload(gw, tenant, _encoded(lines), filename=filename), endpoint=CHAT, metadata=metadata, retry_config=retry_config,
        completion_window=completion_window,
    )


async def _encoded(lines: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    for line in lines:
        yield encode(line)


async def create_inline(gw: Gateway, principal: Principal, data: dict[str, Any]) -> Response:
    body = validate(InlineBatchCreate, data)
    lines, warnings = inline_lines(
        gw.settings, body.input, model=body.model, max_tokens=body.max_tokens, temperature=body.temperature
    )
    record = await submit_lines(
        gw,
        principal.tenant,
        lines,
        metadata=body.metadata,
        filename="inline-input.jsonl",
        retry_config=body.retry_config,
        completion_window=body.completion_window,
    )
    return JSONResponse({**record.openai(), "warnings": warnings})


# -- reading request and result lines ------------------------------------------------


async def json_lines(gw: Gateway, bucket: str, key: str) -> AsyncIterator[dict[str, Any] | None]:
    """The parsed object of each non-blank line, or None where it is not a JSON object."""
    chunks = gw.store.iter_bytes(bucket, key)
    async for raw in aiter_lines(chunks, max_line_bytes=gw.settings.limits.max_line_bytes):
        yield _json_object(raw)


def _json_object(raw: RawLine) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.data or b"")
    except (ValueError, RecursionError):
        obj = None
    return obj if isinstance(obj, dict) else None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_of(body: Any) -> str:
    """The prompt text of a request body (chat: the last user message; completions: the prompt)."""
    if not isinstance(body, dict):
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        chosen = users[-1] if users else (messages[-1] if messages and isinstance(messages[-1], dict) else {})
        return _text(chosen.get("content"))
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return "\n".join(v for v in value if isinstance(v, str))
    return ""


def all_text_of(body: Any) -> str:
    """Every prompt text of a body (all messages), for token counting."""
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return "\n".join(_text(m.get("content")) for m in body["messages"] if isinstance(m, dict))
    return prompt_of(body)


def outcome_of(line: dict[str, Any]) -> dict[str, Any]:
    """output_text / tokens_generated / error of one output or error line."""
    response = line.get("response") or {}
    body = response.get("body") if isinstance(response, dict) else None
    body = body if isinstance(body, dict) else {}
    error = line.get("error")
    status = response.get("status_code", 0) if isinstance(response, dict) else 0
    if error is None and not 200 <= status < 300:
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        error = {"code": detail.get("code") or str(status), "message": detail.get("message", "")}
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    text = first.get("text")
    if isinstance(first.get("message"), dict):
        text = first["message"].get("content")
    if isinstance(body.get("output"), list):  # a /v1/responses Response: its message items' output_text parts
        text = "".join(
            part.get("text") or ""
            for item in body["output"] if isinstance(item, dict) and item.get("type") == "message"
            for part in item.get("content") or [] if isinstance(part, dict) and part.get("type") == "output_text"
        )
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return {
        "output_text": text if error is None else None,
        "tokens_generated": token_counts(usage)[1],
        "finish_reason": first.get("finish_reason"),
        "error": error,
    }


def _deleted(batch: BatchRecord, kind: str, file_id: str) -> OutputFileDeleted:
    return OutputFileDeleted(
        f"The {kind} file {file_id} of batch {batch.id} was deleted; the results it held can no longer be read.",
        param="batch_id",
    )


async def result_file(gw: Gateway, batch: BatchRecord, kind: str, file_id: str) -> FileRecord:
    """The ``kind`` ("output" or "error") file of a finished batch; ``OutputFileDeleted`` once it was deleted."""
    try:
        return await gw.files.get(batch.tenant, file_id)
    except NotFound:
        raise _deleted(batch, kind, file_id) from None


async def _outcomes(gw: Gateway, batch: BatchRecord, kind: str, file_id: str | None) -> dict[str, dict[str, Any]]:
    """Each custom_id's outcome in the batch's ``kind`` file (none if it has no such file)."""
    if file_id is None:
        return {}
    file = await result_file(gw, batch, kind, file_id)
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        async for line in json_lines(gw, file.bucket, file.key):
            if line is not None and isinstance(line.get("custom_id"), str):
                outcomes[line["custom_id"]] = outcome_of(line)
    except ObjectNotFound:
        raise _deleted(batch, kind, file_id) from None
    return outcomes


async def _prompts(gw: Gateway, key: str) -> list[tuple[str, str]]:
    """(custom_id, prompt) of each request line of an input object (only what the results show)."""
    return [
        (request["custom_id"], prompt_of(request.get("body")))
        async for request in json_lines(gw, gw.ctx.inbox, key)
        if request is not None and isinstance(request.get("custom_id"), str)
    ]


async def batch_results(gw: Gateway, tenant: str, batch_id: str) -> dict[str, Any]:
    """The compat results of a finished batch, in input order (kept in memory: small batches).

    The output file, the error file and the input objects are read together.
    """
    record = await gw.batches.get(tenant, batch_id)
    if record.status == BatchStatus.FAILED:
        raise Conflict(f"Batch {batch_id} failed, so it has no results; its errors say why.",
                       code="batch_failed")
    if record.status not in RESULT_STATUSES:
        raise Conflict(
            f"Batch {batch_id} is {record.status.value}; results are available once it is "
            f"{', '.join(s.value for s in RESULT_STATUSES)}.",
            code="batch_not_finished",
        )
    output, errors, *inputs = await in_order(
        _outcomes(gw, record, "output", record.output_file_id),
        _outcomes(gw, record, "error", record.error_file_id),
        *(_prompts(gw, item.key) for item in record.inputs),
    )
    outcomes = {**output, **errors}
    no_result = {
        "output_text": None,
        "tokens_generated": 0,
        "finish_reason": None,
        "error": {"code": "no_result", "message": "No result line exists for this request."},
    }
    data = [
        {"custom_id": custom_id, "input": {"prompt": prompt}, **(outcomes.get(custom_id) or no_result)}
        for prompts in inputs
        for custom_id, prompt in prompts
    ]
    return {
        "object": "list",
        "batch_id": record.id,
        "status": record.status.value,
        "data": data,
        "first_id": data[0]["custom_id"] if data else None,
        "last_id": data[-1]["custom_id"] if data else None,
        "has_more": False,
    }


@tenant_route
async def get_results(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    return JSONResponse(await batch_results(gw, principal.tenant, path_id(request, "batch_id")))


ROUTES = [
    Route("/v1/batches/{batch_id}/results", get_results, methods=["GET"]),
]
