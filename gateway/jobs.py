"""The original design's job endpoints, on top of ordinary batches.

- ``POST /generate_batch`` ``{prompts | input, model, max_tokens, temperature, timeout}``:
  submits an inline batch, waits up to ``timeout`` seconds (default 60, at most
  600) for it to finish, and answers ``{batch_id, status, results, total_time,
  throughput}``. If it is not done in time: 202 with the batch id, to poll
  ``/v1/batches/{id}`` and ``/v1/batches/{id}/results``. While it waits it reads
  the batch with backoff (0.25 s doubling to 2 s) and each read spends one call
  of the caller's rate limit: when the token's bucket is empty it stops waiting
  and answers 202 at once, so a wait costs what polling would.
- ``POST /start`` ``{input: "s3://bucket/key", output: "s3://bucket/key-or-prefix/"}``:
  the input object is JSONL of ``{"prompt": ...}`` items and/or OpenAI request
  lines (prompt items become chat completion lines, other lines pass unchanged,
  so the watcher's validation reports bad ones by line number). It is copied
  into the tenant's uploads and submitted as a batch; the answer is a job id.
  The input must lie under the tenant's own prefix of the inbox/outbox or a
  read grant; the output under a write grant, never in a dropbatch bucket
  (``dropbatch.auth.grants``). Anything else is one 403 ``location_not_granted``,
  decided before any request reaches the named location. An output that exists
  already is refused (409) unless its grant allows overwriting.
- ``GET /jobs/{id}``: the job with its batch's status and counts. When the batch
  has finished, the first such read copies the results to the output URI: a URI
  ending in ``/`` is a prefix receiving ``output.jsonl`` and ``errors.jsonl``;
  otherwise it names the output object and errors go to ``<key>.errors.jsonl``.
  The grants are checked again then, and the copy only creates (``If-None-Match``)
  unless they allow overwriting: a refused copy is ``copy_error``, retried on the
  next read, and never replaces an object.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dropbatch.auth.grants import S3Location
from dropbatch.errors import (
    Conflict,
    DropbatchError,
    InvalidRequest,
    NotFound,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
    UnprocessableRequest,
)
from dropbatch.jsonl import aiter_lines, encode
from dropbatch.models import BatchRecord
from dropbatch.storage.keys import ControlKeys
from gateway.auth import Principal, tenant_route
from gateway.compat import CHAT, RESULT_STATUSES, batch_results, inline_lines, result_file, submit_lines
from gateway.files import store_upload
from gateway.params import json_object, path_id, validate
from gateway.schemas import GenerateBatchRequest, InlineItem, StartJobRequest
from gateway.state import Gateway, gateway_of
from gateway.submit import submit_batch
from gateway.together import in_order

GENERATE_POLL_SECONDS = 0.25  # first wait between reads of the batch, doubling ...
GENERATE_POLL_MAX_SECONDS = 2.0  # ... up to this


# -- /generate_batch -------------------------------------------------------------------


@tenant_route
async def generate_batch(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    body = validate(GenerateBatchRequest, await json_object(request))
    if (body.input is None) == (body.prompts is None):
        raise UnprocessableRequest("Give exactly one of 'prompts' or 'input'.", param="prompts")
    items = body.input or [InlineItem(prompt=p) for p in body.prompts or []]
    lines, warnings = inline_lines(
        gw.settings, items, model=body.model, max_tokens=body.max_tokens, temperature=body.temperature
    )
    started = time.monotonic()
    record = await submit_lines(gw, principal.tenant, lines, metadata=None, filename="generate-batch.jsonl")
    deadline = started + body.timeout
    pause = GENERATE_POLL_SECONDS
    while not record.status.is_terminal and time.monotonic() < deadline:
        await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, GENERATE_POLL_MAX_SECONDS)
        if not gw.limiter.allows(principal.token_id, principal.tier):  # waiting costs what polling would
            break  # answer 202 now: the client polls at its own pace
        record = await gw.batches.get(principal.tenant, record.id)
    answer: dict[str, Any] = {
        "batch_id": record.id,
        "status": record.status.value,
        "request_counts": record.request_counts.model_dump(),
        "warnings": warnings,
    }
    if record.status in RESULT_STATUSES:
        results = await batch_results(gw, principal.tenant, record.id)
        answer["results"] = results["data"]
    else:
        answer["results"] = []
        answer["errors"] = record.errors.model_dump()["data"] if record.errors else []
    total = time.monotonic() - started
    answer["total_time"] = round(total, 3)
    done = [r for r in answer["results"] if r["error"] is None]
    answer["throughput"] = {
        "requests_per_second": round(len(done) / total, 3) if total > 0 else 0.0,
        "tokens_per_second": round(sum(r["tokens_generated"] for r in done) / total, 3) if total > 0 else 0.0,
    }
    return JSONResponse(answer, status_code=200 if record.status.is_terminal else 202)


# -- /start and /jobs/{id} -------------------------------------------------------------


class JobRecord(BaseModel):
    id: str
    tenant: str
    batch_id: str
    input: str
    output: str
    created_at: int
    copied_at: int | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    copy_error: str | None = None


def output_targets(output: S3Location) -> dict[str, S3Location]:
    """Where a job's result files go: ``<prefix>/output.jsonl`` …, or ``<key>`` and ``<key>.errors.jsonl``."""
    if output.is_prefix:
        return {"output": output.child("output.jsonl"), "errors": output.child("errors.jsonl")}
    return {"output": output, "errors": output.child(".errors.jsonl")}


async def _listed_etag(gw: Gateway, location: S3Location) -> str | None:
    """The ETag of the object at ``location``, or None. One LIST of one key, so a write grant's ListBucket suffices."""
    async with aclosing(gw.store.list(location.bucket, location.key, page_size=1)) as listed:
        first = await anext(listed, None)
    return first.etag if first is not None and first.key == location.key else None


async def _check_output(gw: Gateway, targets: dict[str, S3Location], *, overwrite: bool) -> None:
    try:
        for target in targets.values():
            if await _listed_etag(gw, target) is not None and not overwrite:
                raise Conflict(
                    f"{target.uri} already exists; job outputs are never overwritten "
                    "unless the grant allows it (`dropbatch tenant grant … --overwrite`).",
                    code="output_exists",
                    param="output",
                )
    except ObjectNotFound:
        bucket = next(iter(targets.values())).bucket
        raise InvalidRequest(
            f"The output bucket '{bucket}' does not exist.", code="bucket_not_found", param="output"
        ) from None
    except StorageUnavailable:
        raise
    except StorageError as exc:
        raise InvalidRequest(
            f"The output location is not usable: {exc.message}", code="bucket_not_usable", param="output"
        ) from None


async def _converted(
    gw: Gateway, source: S3Location, settings_body: dict[str, Any], endpoint: list[str]
) -> AsyncIterator[bytes]:
    """The input object as request lines: prompt items become chat lines, the rest pass unchanged."""
    chunks = gw.store.iter_bytes(source.bucket, source.key)
    async for raw in aiter_lines(chunks, max_line_bytes=gw.settings.limits.max_line_bytes):
        if raw.data is None:
            raise InvalidRequest(
                f"Line {raw.number} of the input is longer than the maximum line size.",
                code="line_too_long",
                param="input",
                line=raw.number,
            )
        out = raw.data + b"\n"
        try:
            obj = json.loads(raw.data)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and "body" not in obj:
            custom_id = obj.get("custom_id") if isinstance(obj.get("custom_id"), str) else f"line-{raw.number}"
            body = {**settings_body, "messages": [{"role": "user", "content": obj["prompt"]}]}
            obj = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
            out = encode(obj)
        if not endpoint and isinstance(obj, dict) and isinstance(obj.get("url"), str):
            endpoint.append(obj["url"])
        yield out


async def start_job(gw: Gateway, tenant: str, body: StartJobRequest) -> tuple[JobRecord, BatchRecord]:
    source = S3Location.parse(body.input, param="input", object_key=True)
    targets = output_targets(S3Location.parse(body.output, param="output"))
    # Both decided from the URIs and the grants alone: no request has touched either location yet.
    _, overwrite = await in_order(
        gw.grants.check_read(tenant, source, param="input"),
        gw.grants.check_write(tenant, targets.values(), param="output"),
    )
    await _check_output(gw, targets, overwrite=overwrite)
    # The same line the inline form builds, for items that are bare prompts.
    template, _ = inline_lines(
        gw.settings,
        [InlineItem(prompt="-")],
        model=body.model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    settings_body = {k: v for k, v in template[0]["body"].items() if k != "messages"}
    endpoint: list[str] = []
    try:
        file = await store_upload(
            gw, tenant, _converted(gw, source, settings_body, endpoint), filename=source.key.rsplit("/", 1)[-1]
        )
    except ObjectNotFound:
        raise NotFound(
            f"The input object {source.uri} does not exist.", code="input_not_found", param="input"
        ) from None
    except StorageUnavailable:
        raise
    except StorageError as exc:
        raise InvalidRequest(
            f"The input object is not readable: {exc.message}", code="input_not_readable", param="input"
        ) from None
    batch = await submit_batch(gw, tenant, file, endpoint=(endpoint or [CHAT])[0], metadata=body.metadata)
    job = JobRecord(
        id="job-" + secrets.token_hex(12),
        tenant=tenant,
        batch_id=batch.id,
        input=source.uri,
        output=body.output,
        created_at=gw.ctx.now(),
    )
    await gw.records.create(ControlKeys.gateway_job(tenant, job.id), job)
    return job, batch


async def _copy_one(gw: Gateway, source: S3Location, target: S3Location, *, overwrite: bool) -> None:
    try:
        await gw.store.copy(source.bucket, source.key, target.bucket, target.key, if_none_match=not overwrite)
    except ObjectExists:
        # Our own earlier copy (a concurrent read of the job, or a retry) holds the same bytes.
        target_etag, source_etag = await in_order(_listed_etag(gw, target), _listed_etag(gw, source))
        if target_etag != source_etag:
            raise Conflict(f"{target.uri} already exists; job outputs are never overwritten.") from None


async def _copy_results(gw: Gateway, job: JobRecord, batch: BatchRecord) -> JobRecord:
    targets = output_targets(S3Location.parse(job.output, param="output"))
    outputs: dict[str, str] = {}
    error = None
    try:
        # Grants may have been revoked since /start: they decide again, before the copy.
        overwrite = await gw.grants.check_write(job.tenant, targets.values(), param="output")
        for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
            if file_id is None or kind in job.outputs:
                continue
            file = await result_file(gw, batch, "error" if kind == "errors" else kind, file_id)
            await _copy_one(gw, S3Location(file.bucket, file.key), targets[kind], overwrite=overwrite)
            outputs[kind] = targets[kind].uri
    except DropbatchError as exc:
        error = exc.message
    now = gw.ctx.now()

    def settle(current: JobRecord) -> None:
        if current.copied_at is None:
            current.outputs.update(outputs)
            current.copy_error = error
            if error is None:
                current.copied_at = now

    return await gw.records.update(ControlKeys.gateway_job(job.tenant, job.id), JobRecord, settle)


async def job_view(gw: Gateway, tenant: str, job_id: str) -> dict[str, Any]:
    job = await gw.records.get(ControlKeys.gateway_job(tenant, job_id), JobRecord) if job_id.startswith("job-") else None
    if job is None:
        raise NotFound(f"No job found with id '{job_id}'.", param="job_id")
    batch = await gw.batches.get(tenant, job.batch_id)
    if batch.status.is_terminal and job.copied_at is None:
        job = await _copy_results(gw, job, batch)
    return {
        "id": job.id,
        "object": "dropbatch.job",
        "batch_id": job.batch_id,
        "status": batch.status.value,
        "input": job.input,
        "output": job.output,
        "outputs": job.outputs,
        "output_ready": job.copied_at is not None,
        "copy_error": job.copy_error,
        "request_counts": batch.request_counts.model_dump(),
        "errors": batch.errors.model_dump()["data"] if batch.errors else [],
        "created_at": job.created_at,
        "completed_at": batch.completed_at or batch.cancelled_at or batch.expired_at or batch.failed_at,
    }


@tenant_route
async def start(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    body = validate(StartJobRequest, await json_object(request))
    job, batch = await start_job(gw, principal.tenant, body)
    return JSONResponse(
        {
            "id": job.id,
            "object": "dropbatch.job",
            "batch_id": batch.id,
            "status": batch.status.value,
            "input": job.input,
            "output": job.output,
            "created_at": job.created_at,
        }
    )


@tenant_route
async def get_job(request: Request, principal: Principal) -> Response:
    gw = gateway_of(request)
    return JSONResponse(await job_view(gw, principal.tenant, path_id(request, "job_id")))


ROUTES = [
    Route("/generate_batch", generate_batch, methods=["POST"]),
    Route("/start", start, methods=["POST"]),
    Route("/jobs/{job_id}", get_job, methods=["GET"]),
]
