"""``POST /v1/batches/cost-estimate``: what a batch would cost, before it is submitted.

Prompt tokens are counted by the model's own ``tokenizer.json`` (``gateway.tokenize``)
and priced with ``PRICES``; the output side is the most the batch could produce
(each line's max tokens times its choices). For ``input_file_id`` every line is
checked as the watcher checks it, so a value no batch would admit is a 400 naming
the line and field. The file is read on the event loop; parsing and tokenizing,
CPU work, run in a worker thread a block of lines at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.bodies import EMBEDDINGS, BodyLimits, body_limits
from dropbatch.errors import InvalidRequest, UnprocessableRequest
from dropbatch.jsonl import RawLine, aiter_lines, first_url, parse_request_line
from dropbatch.models import FileRecord
from dropbatch.settings import Settings
from gateway.auth import Principal, tenant_route
from gateway.compat import CHAT, all_text_of, resolve_model
from gateway.params import json_object, validate
from gateway.schemas import MAX_INLINE_ITEMS, CostEstimateRequest
from gateway.state import Gateway, gateway_of
from gateway.tokenize import TokenCounter, load_counter

BLOCK_LINES = 1024  # lines parsed and tokenized per trip to a worker thread


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float


# Per-model prices for cost estimates, USD per 1M tokens, keyed by the served model
# name (DROPBATCH_MODEL_NAME) or the weights (DROPBATCH_MODEL). Self-hosted models
# have no list price: these are nominal figures for capacity planning. Belongs in
# Settings (a `prices` group) once the kernel grows one; until then, here.
PRICES: dict[str, Price] = {
    "dropbatch-tiny": Price(input=0.01, output=0.02),
    "Qwen/Qwen2.5-0.5B-Instruct": Price(input=0.02, output=0.04),
    "default": Price(input=0.10, output=0.40),
}

LineCost = tuple[str, int | None, int]  # one request's prompt text, max tokens per choice, and choices


def price_for(settings: Settings, model: str) -> Price:
    return PRICES.get(model) or PRICES.get(settings.engine.model) or PRICES["default"]


def token_counter(gw: Gateway) -> TokenCounter:
    counter = gw.caches.get("token_counter")
    if counter is None:
        counter = gw.caches["token_counter"] = load_counter(gw.settings.engine)
    return counter


@dataclass
class Tally:
    """Running totals of an estimate, added to a block of requests at a time."""

    counter: TokenCounter
    max_tokens: int | None  # the request's override of every line's budget
    default: int
    items: int = 0
    input_tokens: int = 0
    max_output: int = 0

    def add(self, requests: Iterable[LineCost]) -> None:
        texts = []
        for text, per_choice, choices in requests:
            self.items += 1
            self.max_output += (self.max_tokens or per_choice or self.default) * choices
            texts.append(text)
        self.input_tokens += sum(self.counter.count(texts))


def line_requests(
    lines: Iterable[RawLine], *, file_id: str, endpoint: str, model: str, limits: BodyLimits
) -> Iterator[LineCost]:
    """The requests of a file's lines, each checked as the watcher checks it (a 400 naming the line)."""
    for raw in lines:
        try:
            request = parse_request_line(raw, endpoint=endpoint, model=model, limits=limits)
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"File {file_id}: {exc.message}", code=exc.code, param=exc.param, line=exc.line
            ) from None
        body = request.body
        if endpoint == EMBEDDINGS:
            yield all_text_of(body), 0, 0
        else:
            budget = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
            yield all_text_of(body), budget, request.cost


def _lines(gw: Gateway, file: FileRecord) -> AsyncIterator[RawLine]:
    return aiter_lines(gw.store.iter_bytes(file.bucket, file.key), max_line_bytes=gw.settings.limits.max_line_bytes)


async def _endpoint(gw: Gateway, file: FileRecord) -> str:
    """The ``url`` of the file's first line that names one (read only that far), else chat completions."""
    async with aclosing(_lines(gw, file)) as lines:
        async for raw in lines:
            if (url := first_url([raw])) is not None:
                return url
    return CHAT


async def _blocks(gw: Gateway, file: FileRecord) -> AsyncIterator[list[RawLine]]:
    block: list[RawLine] = []
    async with aclosing(_lines(gw, file)) as lines:
        async for raw in lines:
            block.append(raw)
            if len(block) >= BLOCK_LINES:
                yield block
                block = []
    if block:
        yield block


async def estimate_cost(gw: Gateway, tenant: str, body: CostEstimateRequest) -> dict[str, Any]:
    """Prompt tokens (really tokenized when possible) and the most output the batch could produce."""
    if (body.input is None) == (body.input_file_id is None):
        raise UnprocessableRequest("Give exactly one of 'input' or 'input_file_id'.", param="input")
    model = resolve_model(gw.settings, body.model)
    counter = await run_in_threadpool(token_counter, gw)  # the first call reads tokenizer.json
    default = body.max_tokens or gw.settings.engine.default_max_tokens
    tally = Tally(counter, body.max_tokens, default)
    if body.input is not None:
        await run_in_threadpool(tally.add, [(item.prompt, default, 1) for item in body.input[:MAX_INLINE_ITEMS]])
    else:
        file_id = body.input_file_id or ""
        file = await gw.files.get(tenant, file_id)
        endpoint, limits = await _endpoint(gw, file), body_limits(gw.settings)
        async with aclosing(_blocks(gw, file)) as blocks:
            async for block in blocks:
                requests = line_requests(block, file_id=file_id, endpoint=endpoint, model=model, limits=limits)
                await run_in_threadpool(tally.add, requests)
    price = price_for(gw.settings, model)
    cost = tally.input_tokens / 1e6 * price.input + tally.max_output / 1e6 * price.output
    return {
        "object": "dropbatch.cost_estimate",
        "model": model,
        "items": tally.items,
        "input_tokens": tally.input_tokens,
        "max_output_tokens": tally.max_output,
        "estimated_cost_usd": round(cost, 8),
        "pricing": {"input_per_million_usd": price.input, "output_per_million_usd": price.output},
        "tokenizer": counter.source,
    }


@tenant_route
async def cost_estimate(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    body = validate(CostEstimateRequest, await json_object(request))
    return JSONResponse(await estimate_cost(gw, principal.tenant, body))


ROUTES = [Route("/v1/batches/cost-estimate", cost_estimate, methods=["POST"])]
