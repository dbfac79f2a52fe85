"""/v1/batches: create from an uploaded file, retrieve, list newest first, cancel.

Batches from the drop-box are the same records, so they are listed and served
here too. Cancelling moves a ``validating`` or ``in_progress`` batch to
``cancelling``; the services finish it: the runner (at its next progress check,
or before it starts the batch) keeps what finished and writes ``batch_cancelled``
lines for the rest, and the watcher closes a batch it never admitted as
``cancelled`` with nothing run.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.models import BatchRecord, BatchStatus
from gateway import compat
from gateway.auth import Principal, tenant_route
from gateway.files import list_envelope
from gateway.params import json_object, path_id, query_cursor, query_int, validate
from gateway.schemas import BatchCreate
from gateway.state import Gateway, gateway_of
from gateway.submit import submit_batch


async def create(gw: Gateway, tenant: str, body: BatchCreate) -> BatchRecord:
    return await submit_batch(
        gw,
        tenant,
        gw.files.get(tenant, body.input_file_id),  # another tenant's file is "no such file"
        endpoint=body.endpoint,
        metadata=body.metadata,
        retry_config=body.retry_config,
        output_expires_after=body.output_expires_after,
        completion_window=body.completion_window,
    )


@tenant_route
async def create_batch(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    data = await json_object(request)
    if "input" in data and "input_file_id" not in data:
        return await compat.create_inline(gw, principal, data)
    body = validate(BatchCreate, data)
    record = await create(gw, principal.tenant, body)
    return JSONResponse(record.openai())


@tenant_route
async def list_batches(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    after = query_cursor(request)
    limit = query_int(request, "limit", default=20, low=1, high=100)
    page, has_more = await gw.batches.list(principal.tenant, after=after, limit=limit)
    return JSONResponse(list_envelope([b.openai() for b in page], has_more))


@tenant_route
async def retrieve_batch(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    record = await gw.batches.get(principal.tenant, path_id(request, "batch_id"))
    return JSONResponse(record.openai())


async def cancel(gw: Gateway, tenant: str, batch_id: str) -> BatchRecord:
    """validating/in_progress → cancelling; cancelling/cancelled unchanged; any other state is a 409."""
    ctx = gw.ctx

    def request_cancel(batch: BatchRecord) -> None:
        if batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
            batch.transition(BatchStatus.CANCELLING, ctx.now())  # Conflict (409) from finalizing or terminal

    record = await gw.batches.update(tenant, batch_id, request_cancel)
    await gw.records.audit(
        "batch.cancel_requested", now=ctx.clock(), tenant=tenant, batch_id=batch_id, status=record.status.value
    )
    return record


@tenant_route
async def cancel_batch(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    await json_object(request, optional=True)  # the SDK sends no body; a broken one is still a 400
    record = await cancel(gw, principal.tenant, path_id(request, "batch_id"))
    return JSONResponse(record.openai())


ROUTES = [
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
