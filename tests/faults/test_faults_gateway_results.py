"""Compat results on the gateway's event loop when S3 answers late, or a result object is gone.

``GET /v1/batches/{id}/results`` reads the output file, the error file and the input
objects together through the async store; whichever read returns first, the answer
is the one reading them one after another gave: results in input order, or
``output_file_deleted`` naming the first missing file (output before error).
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from proxy import DenyRule, FaultPlan, TargetedFault

from dropbatch.context import Context
from dropbatch.errors import OutputFileDeleted
from dropbatch.jsonl import error_line, result_line
from dropbatch.models import BatchRecord, BatchStatus, FileRecord, InputObject
from gateway.app import create_app
from gateway.compat import batch_results

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
SHA = "0" * 64
OUTPUT_KEY = f"acme/{SHA}/output.jsonl"
ERRORS_KEY = f"acme/{SHA}/errors.jsonl"


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _finished_batch(ctx: Context) -> BatchRecord:
    """A completed batch of three requests: two answered in the output file, one in the error file."""
    ctx.tenants.create("acme", "basic")
    requests = [
        {"custom_id": f"req-{i}", "method": "POST", "url": CHAT,
         "body": {"model": "m", "messages": [{"role": "user", "content": f"prompt {i}"}]}}
        for i in range(3)
    ]
    data = _jsonl(requests)
    ctx.store.put(ctx.inbox, "acme/job/input.jsonl", data)
    answers = [
        result_line(SHA, f"req-{i}", 200, {"choices": [{"message": {"content": f"answer {i}"}, "finish_reason": "stop"}],
                                           "usage": {"completion_tokens": i + 1}})
        for i in (0, 1)
    ]
    ctx.store.put(ctx.outbox, OUTPUT_KEY, _jsonl(answers))
    ctx.store.put(ctx.outbox, ERRORS_KEY, _jsonl([error_line(SHA, "req-2", "batch_expired", "too late")]))
    for file_id, key in (("file-out", OUTPUT_KEY), ("file-err", ERRORS_KEY)):
        ctx.files.create(FileRecord(id=file_id, bytes=1, created_at=1, filename=f"{file_id}.jsonl",
                                    purpose="batch_output", status="processed", tenant="acme",
                                    bucket=ctx.outbox, key=key, batch_id="batch_r"))
    record = BatchRecord(
        id="batch_r", endpoint=CHAT, input_file_id="file-in", status=BatchStatus.COMPLETED, created_at=1,
        tenant="acme", job="job", output_file_id="file-out", error_file_id="file-err",
        inputs=[InputObject(key="acme/job/input.jsonl", size=len(data), sha256=hashlib.sha256(data).hexdigest())],
    )
    ctx.batches.create(record)
    return record


def _results_through(make_context, start_proxy, plan: FaultPlan) -> dict:
    """The batch's results read by a gateway whose S3 goes through a proxy with ``plan``; one read was held back."""
    direct = make_context()
    batch = _finished_batch(direct)
    proxy = start_proxy(plan)
    settings = direct.settings.with_endpoint(proxy.url)
    gw = create_app(settings, ctx=Context.from_settings(settings)).state.gateway

    async def read() -> dict:
        try:
            return await batch_results(gw, "acme", batch.id)
        finally:
            await gw.store.close()
            assert proxy.faults().get("delay") == 1

    return asyncio.run(read())


def _late(key: str) -> TargetedFault:
    return TargetedFault("delay", f"{key}$", method="GET")


def test_results_in_input_order_however_late_the_output_file_answers(make_context, start_proxy) -> None:
    results = _results_through(make_context, start_proxy, FaultPlan(delay_seconds=0.5, targeted=[_late(OUTPUT_KEY)]))

    assert [(r["custom_id"], r["input"]["prompt"], r["output_text"], r["tokens_generated"]) for r in results["data"]] == [
        ("req-0", "prompt 0", "answer 0", 1),
        ("req-1", "prompt 1", "answer 1", 2),
        ("req-2", "prompt 2", None, 0),
    ]
    assert results["data"][2]["error"] == {"code": "batch_expired", "message": "too late"}
    assert (results["first_id"], results["last_id"], results["status"]) == ("req-0", "req-2", "completed")


@pytest.mark.parametrize(
    ("gone", "named"),
    [((OUTPUT_KEY, ERRORS_KEY), "file-out"), ((ERRORS_KEY,), "file-err")],
)
def test_a_deleted_result_object_is_named_as_when_read_in_turn(make_context, start_proxy, gone, named) -> None:
    # The output file's reads come late (its record first; a denied object cannot be held back),
    # so the error file's 404 arrives first, yet the first missing file in reading order is named.
    plan = FaultPlan(
        delay_seconds=0.5,
        targeted=[_late(r"files/acme/file-out\.json")],
        deny=[DenyRule(f"{key}$", status=404, code="NoSuchKey", message="gone") for key in gone],
    )
    with pytest.raises(OutputFileDeleted) as deleted:
        _results_through(make_context, start_proxy, plan)

    assert deleted.value.code == "output_file_deleted"
    assert f" file {named} of batch batch_r " in deleted.value.message
