"""The runner over the memory store with the light EchoEngine: claims, coalescing, results, resume."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import EngineError
from dropbatch.ids import request_line_id
from dropbatch.models import BatchRecord, BatchStatus
from dropbatch.storage.keys import ControlKeys, OutputPrefix
from runner.arenas import cap_malloc_arenas
from runner.schedule import STRIDE, URGENT
from runner.service import Runner
from watcher.admission import admit_manifest


class Wrapped:
    """An engine that delegates to EchoEngine and calls ``each(i)`` before yielding result ``i``.

    ``each`` may raise (an engine dying mid-run) or look at / change the world.
    """

    def __init__(self, inner: EchoEngine, each: Callable[[int], None]) -> None:
        self.inner = inner
        self.each = each
        self.runs = inner.runs

    def __enter__(self) -> Wrapped:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
        for i, result in enumerate(self.inner.run(chunks)):
            self.each(i)
            yield result


@pytest.fixture
def submit(make_tenant, make_jsonl, drop_job):
    """``submit(ctx, "j1", 5, **make_jsonl_kwargs)`` → the admitted batch record (tenant acme)."""
    keys: dict[int, Any] = {}

    def factory(ctx, job: str, n: int, *, endpoint: str = "/v1/chat/completions", data: bytes | None = None, **lines: Any) -> BatchRecord:
        if id(ctx) not in keys:
            keys[id(ctx)] = make_tenant(ctx, "acme", "enterprise")[1]
        payload = data if data is not None else make_jsonl(n, endpoint=endpoint, **lines)
        dropped = drop_job(ctx, "acme", job, payload, key=keys[id(ctx)], endpoint=endpoint)
        record = admit_manifest(ctx, dropped.ref)
        assert record is not None
        return record

    return factory


def outbox_lines(ctx, key: str) -> list[dict[str, Any]]:
    data, _ = ctx.store.get(ctx.outbox, key)
    return [json.loads(line) for line in data.splitlines()]


def results(ctx, record: BatchRecord) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assert record.result is not None
    return outbox_lines(ctx, record.result.output_key), outbox_lines(ctx, record.result.errors_key)


def assert_each_custom_id_once(record: BatchRecord, output: list[dict], errors: list[dict], expected: set[str]) -> None:
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(expected)
    for line in output + errors:
        assert line["id"] == request_line_id(record.content_sha256 or "", line["custom_id"])


def assert_settled(ctx, record: BatchRecord) -> None:
    """Nothing is left behind: no queue entry, no lease, no chunk checkpoints."""
    bucket = ctx.records.bucket
    assert list(ctx.queue.entries()) == []
    assert list(ctx.store.list(bucket, ControlKeys.lease(record.id))) == []
    assert list(ctx.store.list(bucket, ControlKeys.chunk_prefix(record.id))) == []


def test_one_batch_completes(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=3)
    admitted = submit(ctx, "j1", 8, words=3, max_tokens=2)
    engine = EchoEngine(ctx.store, ctx.settings)
    assert Runner(ctx, engine).run_once() == 1
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.COMPLETED
    assert record.finalizing_at is not None and record.completed_at is not None
    assert (record.request_counts.total, record.request_counts.completed, record.request_counts.failed) == (8, 8, 0)
    assert not record.cached
    output, errors = results(ctx, record)
    assert errors == []
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(8)})
    first = next(line for line in output if line["custom_id"] == "req-0")
    body = first["response"]["body"]
    assert first["response"]["status_code"] == 200 and first["error"] is None
    assert body["object"] == "chat.completion" and body["model"] == "dropbatch-tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "w0_2 w0_1", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert record.usage is not None and (record.usage.input_tokens, record.usage.output_tokens) == (24, 16)
    assert record.output_file_id and record.error_file_id is None
    assert ctx.files.get("acme", record.output_file_id).key == record.result.output_key
    summary = json.loads(ctx.store.get(ctx.outbox, record.result.summary_key)[0])
    assert summary["request_counts"] == {"total": 8, "completed": 8, "failed": 0} and not summary["partial"]
    assert engine.runs == [8]
    assert_settled(ctx, record)
    assert Runner(ctx, engine).run_once() == 0


def test_over_long_prompt_is_one_error_line(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_MAX_MODEL_LEN=10, DROPBATCH_CHUNK_LINES=2)
    long = {"role": "user", "content": "word " * 50}
    admitted = submit(ctx, "j1", 5, body=lambda i, b: {**b, "messages": [long]} if i == 2 else b)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (4, 1)
    output, errors = results(ctx, record)
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(5)})
    assert [line["custom_id"] for line in errors] == ["req-2"]
    response = errors[0]["response"]
    assert response["status_code"] == 400
    assert response["body"]["error"]["code"] == "context_length_exceeded"
    assert record.error_file_id is not None


def test_results_and_errors_come_from_one_read_of_each_chunk(make_context, submit, monkeypatch) -> None:
    import runner.finalize

    monkeypatch.setattr(runner.finalize, "_ERRORS_IN_MEMORY", 64)  # the error lines spill to disk
    monkeypatch.setattr(runner.finalize, "_ERRORS_PART", 100)
    ctx = make_context(DROPBATCH_MAX_MODEL_LEN=10, DROPBATCH_CHUNK_LINES=3)
    long = {"role": "user", "content": "word " * 50}
    admitted = submit(ctx, "j1", 11, body=lambda i, b: {**b, "messages": [long]} if i % 2 else b)
    reads: list[str] = []
    get = ctx.store.get

    def counted(bucket: str, key: str, **kwargs: Any):
        reads.append(key)
        return get(bucket, key, **kwargs)

    monkeypatch.setattr(ctx.store, "get", counted)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    output, errors = results(ctx, record)
    assert [line["custom_id"] for line in output] == [f"req-{i}" for i in range(0, 11, 2)]
    assert [line["custom_id"] for line in errors] == [f"req-{i}" for i in range(1, 11, 2)]
    assert {line["response"]["body"]["error"]["code"] for line in errors} == {"context_length_exceeded"}
    assert (record.request_counts.completed, record.request_counts.failed) == (6, 5)
    chunk_reads = sorted(key for key in reads if "/chunks/" in key)
    assert chunk_reads == sorted(ControlKeys.chunk_result(record.id, n) for n in range(4))


def test_unservable_line_is_refused_at_admission(make_context, submit) -> None:
    ctx = make_context()
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    record = submit(ctx, "j1", 3, body=lambda i, b: {**b, "messages": image} if i == 1 else b)
    assert record.status == BatchStatus.FAILED
    assert record.errors is not None
    [error] = record.errors.data
    assert (error.code, error.line, error.param) == (
        "unsupported_content_type",
        2,
        "body.messages[0].content[0].type",
    )
    assert Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once() == 0


def test_line_the_engine_cannot_fit_is_an_error_line(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_MAX_MODEL_LEN="6")
    long = [{"role": "user", "content": "many words " * 20}]
    admitted = submit(ctx, "j1", 3, max_tokens=1, body=lambda i, b: {**b, "messages": long} if i == 0 else b)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    output, errors = results(ctx, record)
    assert record.status == BatchStatus.COMPLETED
    assert [line["custom_id"] for line in errors] == ["req-0"] and len(output) == 2
    assert errors[0]["response"]["status_code"] == 400


def test_queued_batches_are_coalesced_into_one_engine_run(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=2)
    ids = [submit(ctx, f"j{k}", 3 + k, custom_id=lambda i, k=k: f"b{k}-{i}").id for k in range(3)]
    engine = EchoEngine(ctx.store, ctx.settings)
    assert Runner(ctx, engine).run_once() == 3
    assert engine.runs == [3 + 4 + 5]
    for k, batch_id in enumerate(ids):
        record = ctx.batches.get("acme", batch_id)
        assert record.status == BatchStatus.COMPLETED
        output, errors = results(ctx, record)
        assert_each_custom_id_once(record, output, errors, {f"b{k}-{i}" for i in range(3 + k)})
    assert list(ctx.queue.entries()) == []


def test_coalescing_stops_at_the_line_limit(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_COALESCE_MAX_LINES=4)
    for k in range(3):
        submit(ctx, f"j{k}", 3, custom_id=lambda i, k=k: f"b{k}-{i}")
    engine = EchoEngine(ctx.store, ctx.settings)
    runner_ = Runner(ctx, engine)
    assert runner_.run_once() == 2  # 3 lines, then 6 >= 4: stop claiming
    assert runner_.run_once() == 1
    assert engine.runs == [6, 3]


def test_completions_endpoint(make_context, submit) -> None:
    ctx = make_context()
    admitted = submit(ctx, "j1", 3, endpoint="/v1/completions", words=4, max_tokens=10)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    output, errors = results(ctx, record)
    assert record.status == BatchStatus.COMPLETED and errors == []
    body = next(line for line in output if line["custom_id"] == "req-1")["response"]["body"]
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "w1_3 w1_2 w1_1 w1_0"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 4


def test_embeddings_endpoint_with_list_input(make_context, submit) -> None:
    ctx = make_context()
    inputs = ["alpha", "beta gamma", "delta epsilon zeta"]
    admitted = submit(ctx, "j1", 2, endpoint="/v1/embeddings", body=lambda i, b: {**b, "input": inputs} if i == 1 else b)
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    output, errors = results(ctx, record)
    assert record.status == BatchStatus.COMPLETED and errors == []
    by_id = {line["custom_id"]: line["response"]["body"] for line in output}
    assert by_id["req-1"]["object"] == "list"
    assert [item["index"] for item in by_id["req-1"]["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in by_id["req-1"]["data"])
    # EchoEngine's vector is (characters, words, 1): each item is its own input, in order.
    assert [item["embedding"][:2] for item in by_id["req-1"]["data"]] == [[5.0, 1.0], [10.0, 2.0], [18.0, 3.0]]
    assert by_id["req-1"]["usage"]["prompt_tokens"] == 6
    assert len(by_id["req-0"]["data"]) == 1


def test_mixed_endpoints_in_one_pass(make_context, submit) -> None:
    ctx = make_context()
    chat = submit(ctx, "chat", 2)
    embed = submit(ctx, "embed", 2, endpoint="/v1/embeddings")
    engine = EchoEngine(ctx.store, ctx.settings)
    assert Runner(ctx, engine).run_once() == 2
    assert sorted(engine.runs) == [2, 2]  # one engine run per task
    for batch_id in (chat.id, embed.id):
        assert ctx.batches.get("acme", batch_id).status == BatchStatus.COMPLETED


def deterministic(i: int, body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "temperature": 0}


def test_identical_work_is_answered_from_the_outbox(make_context, submit, make_jsonl) -> None:
    ctx = make_context()
    data = make_jsonl(4, body=deterministic)
    first = submit(ctx, "j1", 0, data=data)
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    done = ctx.batches.get("acme", first.id)

    again = submit(ctx, "j2", 0, data=data)

    assert again.id != first.id
    assert again.status == BatchStatus.COMPLETED and again.cached
    assert again.content_sha256 == done.content_sha256
    assert again.result == done.result
    assert again.request_counts == done.request_counts
    assert again.output_file_id and again.output_file_id != done.output_file_id
    assert ctx.files.get("acme", again.output_file_id).key == done.result.output_key
    assert list(ctx.queue.entries()) == []
    assert Runner(ctx, engine).run_once() == 0
    assert engine.runs == [4]  # no second engine run


def test_identical_work_queued_together_runs_once(make_context, submit, make_jsonl) -> None:
    ctx = make_context()
    data = make_jsonl(3, body=deterministic)
    first, second = submit(ctx, "j1", 0, data=data), submit(ctx, "j2", 0, data=data)
    engine = EchoEngine(ctx.store, ctx.settings)
    runner_ = Runner(ctx, engine)
    runner_.run_once()
    runner_.run_once()
    assert engine.runs == [3]
    records = [ctx.batches.get("acme", b.id) for b in (first, second)]
    assert [r.status for r in records] == [BatchStatus.COMPLETED] * 2
    assert sorted(r.cached for r in records) == [False, True]  # one ran, the other was answered
    assert records[0].result == records[1].result


def test_identical_work_claimed_by_another_group_waits_for_the_first(make_context, submit, make_jsonl) -> None:
    """A second group of the same runner (another of its slots) leaves identical work queued while the
    first group runs it, so it is answered from the outbox afterwards: neither run nor charged twice."""
    ctx = make_context()
    data = make_jsonl(3, body=deterministic)
    first = submit(ctx, "j1", 0, data=data)
    engine = EchoEngine(ctx.store, ctx.settings)
    runner_ = Runner(ctx, engine)
    running = runner_.claim_group()
    assert [c.record.id for c in running] == [first.id]
    second = submit(ctx, "j2", 0, data=data)
    assert runner_.claim_group() == []  # the other slot: j2 stays queued
    runner_.run_group(running)
    runner_.run_once()
    again = ctx.batches.get("acme", second.id)
    assert again.status == BatchStatus.COMPLETED and again.cached
    assert engine.runs == [3]
    assert ctx.quotas.usage("acme", "enterprise")[0] == 3  # j1's lines; j2 was answered from the outbox


def test_the_same_bytes_from_two_tenants_run_for_each_at_once(make_context, submit, make_jsonl, make_tenant,
                                                              drop_job) -> None:
    """Work is shared within a tenant only, so another tenant's identical batch never waits for it."""
    ctx = make_context()
    data = make_jsonl(3, body=deterministic)
    first = submit(ctx, "j1", 0, data=data)
    rival = admit_manifest(ctx, drop_job(ctx, "rival", "r1", data, key=make_tenant(ctx, "rival", "enterprise")[1]).ref)
    assert rival.content_sha256 == first.content_sha256
    runner_ = Runner(ctx, EchoEngine(ctx.store, ctx.settings))
    group = runner_.claim_group()
    assert sorted(c.record.id for c in group) == sorted([first.id, rival.id])
    runner_.run_group(group)
    assert [ctx.batches.get(t, b.id).cached for t, b in (("acme", first), ("rival", rival))] == [False, False]


def test_resume_after_engine_failure(make_context, make_clock, submit) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 7)
    echo = EchoEngine(ctx.store, ctx.settings)

    def die_after_five(i: int) -> None:
        if i == 5:
            raise EngineError("engine died")

    with pytest.raises(EngineError):
        Runner(ctx, Wrapped(echo, die_after_five), owner="runner-a").run_once()
    checkpoints = list(ctx.store.list(ctx.records.bucket, ControlKeys.chunk_prefix(admitted.id)))
    assert len(checkpoints) == 2  # chunks 0 and 1 finished; chunk 2 was half done
    assert ctx.batches.get("acme", admitted.id).status == BatchStatus.IN_PROGRESS

    assert Runner(ctx, EchoEngine(ctx.store, ctx.settings), owner="runner-b").run_once() == 0  # lease still held
    clock.advance(ctx.settings.service.lease_seconds + 1)
    second = EchoEngine(ctx.store, ctx.settings)
    assert Runner(ctx, second, owner="runner-b").run_once() == 1
    assert second.runs == [3]  # only chunks 2 and 3 ran again
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.total, record.request_counts.completed, record.request_counts.failed) == (7, 7, 0)
    output, errors = results(ctx, record)
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(7)})
    assert_settled(ctx, record)


def test_cancel_before_run(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 5)
    ctx.batches.update("acme", admitted.id, lambda b: b.transition(BatchStatus.CANCELLING, ctx.now()))
    engine = EchoEngine(ctx.store, ctx.settings)
    assert Runner(ctx, engine).run_once() == 0
    assert engine.runs == []
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.CANCELLED
    assert record.cancelling_at is not None and record.cancelled_at is not None
    assert (record.request_counts.completed, record.request_counts.failed) == (0, 5)
    output, errors = results(ctx, record)
    assert output == []
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(5)})
    assert all(line["error"]["code"] == "batch_cancelled" and line["response"] is None for line in errors)
    assert record.result.prefix == OutputPrefix("acme", record.content_sha256, partial_of=record.id).prefix
    assert_settled(ctx, record)


def test_a_batch_that_expires_before_it_starts_gives_its_quota_back(make_context, make_clock, submit) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_CHUNK_LINES=2, DROPBATCH_COMPLETION_WINDOWS="24h=60")
    admitted = submit(ctx, "j1", 5)
    assert ctx.quotas.usage("acme", "enterprise")[0] == 5
    clock.now = admitted.expires_at + 1
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert engine.runs == []
    assert ctx.batches.get("acme", admitted.id).status == BatchStatus.EXPIRED
    assert ctx.quotas.usage("acme", "enterprise")[0] == 0  # nothing ran, as for a batch cancelled before it ran


def test_a_batch_that_expires_after_a_partial_pass_keeps_only_what_ran_of_its_quota(
    make_context, make_clock, submit
) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_CHUNK_LINES=2, DROPBATCH_COMPLETION_WINDOWS="24h=60")
    admitted = submit(ctx, "j1", 6)

    def die_after_three(i: int) -> None:
        if i == 3:
            raise EngineError("engine died")

    with pytest.raises(EngineError):
        Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), die_after_three), progress_seconds=0).run_once()
    ran = ctx.batches.get("acme", admitted.id).request_counts
    assert (ran.completed, ran.failed) == (3, 0)
    clock.now = admitted.expires_at + 1
    Runner(ctx, EchoEngine(ctx.store, ctx.settings)).run_once()
    assert ctx.batches.get("acme", admitted.id).status == BatchStatus.EXPIRED
    assert ctx.quotas.usage("acme", "enterprise")[0] == 3  # what ran (as published); the rest gives its share back


def test_cancel_during_run_keeps_finished_lines(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 6)

    def cancel_at_three(i: int) -> None:
        # Result 3 is already on its way: it is kept; the stop is seen right after it.
        if i == 3:
            ctx.batches.update("acme", admitted.id, lambda b: b.transition(BatchStatus.CANCELLING, ctx.now()))

    Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), cancel_at_three), progress_seconds=0).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.CANCELLED
    output, errors = results(ctx, record)
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(6)})
    assert {line["custom_id"] for line in output} == {"req-0", "req-1", "req-2", "req-3"}
    assert {line["custom_id"] for line in errors} == {"req-4", "req-5"}
    assert all(line["error"]["code"] == "batch_cancelled" for line in errors)
    assert (record.request_counts.completed, record.request_counts.failed) == (4, 2)
    assert list(ctx.store.list(ctx.outbox, OutputPrefix("acme", record.content_sha256).summary_key)) == []
    assert ctx.quotas.usage("acme", "enterprise")[0] == 4  # the hour counts the 4 lines that ran, not the 6


def test_a_cancel_that_comes_with_the_last_lines_closes_the_batch_cancelled_with_every_line(
    make_context, submit
) -> None:
    """The client saw ``cancelling``: the batch ends ``cancelled``, at once and with all its lines, not
    stuck until its lease runs out (finalize tried cancelling → finalizing, which is no transition)."""
    ctx = make_context(DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 6)

    def cancel_at_the_last(i: int) -> None:
        if i == 5:  # every line is out of the engine: the batch is closed next
            ctx.batches.update("acme", admitted.id, lambda b: b.transition(BatchStatus.CANCELLING, ctx.now()))

    Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), cancel_at_the_last)).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.CANCELLED and record.cancelled_at is not None
    output, errors = results(ctx, record)
    assert {line["custom_id"] for line in output} == {f"req-{i}" for i in range(6)} and errors == []
    assert (record.request_counts.completed, record.request_counts.failed) == (6, 0)
    assert list(ctx.queue.entries()) == []


def test_expiry_keeps_partial_results_apart(make_context, make_clock, submit) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 6)

    def die_after_three(i: int) -> None:
        if i == 3:
            raise EngineError("engine died")

    with pytest.raises(EngineError):
        Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), die_after_three)).run_once()
    clock.now = admitted.expires_at + 1
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert engine.runs == []  # never start a batch past its deadline
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.EXPIRED and record.expired_at == int(clock())
    partial = OutputPrefix("acme", record.content_sha256, partial_of=record.id)
    assert record.result.prefix == partial.prefix
    assert record.result.prefix.endswith(f"/partial-{record.id}/")
    output, errors = results(ctx, record)
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(6)})
    assert {line["custom_id"] for line in output} == {"req-0", "req-1"}
    assert len(errors) == 4 and all(line["error"]["code"] == "batch_expired" for line in errors)
    assert (record.request_counts.total, record.request_counts.completed, record.request_counts.failed) == (6, 2, 4)
    summary = json.loads(ctx.store.get(ctx.outbox, partial.summary_key)[0])
    assert summary["partial"] is True
    # The partial results never answer a resubmission of the same work.
    assert list(ctx.store.list(ctx.outbox, OutputPrefix("acme", record.content_sha256).summary_key)) == []
    assert_settled(ctx, record)


def test_expiry_during_run(make_context, make_clock, submit) -> None:
    clock = make_clock()
    ctx = make_context(clock=clock, DROPBATCH_CHUNK_LINES=2)
    admitted = submit(ctx, "j1", 6)

    def expire_at_two(i: int) -> None:
        if i == 2:
            clock.now = admitted.expires_at

    Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), expire_at_two), progress_seconds=0).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.EXPIRED
    output, errors = results(ctx, record)
    assert_each_custom_id_once(record, output, errors, {f"req-{i}" for i in range(6)})
    assert {line["custom_id"] for line in output} == {"req-0", "req-1", "req-2"}  # result 2 was in flight
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_request_counts_move_during_the_run(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=2, DROPBATCH_MAX_MODEL_LEN=10)
    long = {"role": "user", "content": "word " * 50}
    admitted = submit(ctx, "j1", 6, body=lambda i, b: {**b, "messages": [long]} if i == 4 else b)
    seen: list[tuple[str, int, int]] = []

    def look(i: int) -> None:
        record = ctx.batches.get("acme", admitted.id)
        seen.append((record.status.value, record.request_counts.completed, record.request_counts.failed))

    Runner(ctx, Wrapped(EchoEngine(ctx.store, ctx.settings), look), progress_seconds=0).run_once()
    assert [s for s, _, _ in seen] == ["in_progress"] * 6
    done = [completed + failed for _, completed, failed in seen]
    assert done == [0, 1, 2, 3, 4, 5]  # each published result is visible before the next one
    assert seen[-1] == ("in_progress", 4, 1)
    final = ctx.batches.get("acme", admitted.id)
    assert (final.request_counts.completed, final.request_counts.failed) == (5, 1)


def test_changed_input_after_admission_fails_the_batch_and_runs_nothing(make_context, submit) -> None:
    """Bytes swapped after admission never produce results: the batch fails with input_changed."""
    ctx = make_context()
    admitted = submit(ctx, "j1", 3)
    key = admitted.inputs[0].key
    data, _ = ctx.store.get(ctx.inbox, key)
    ctx.store.put(ctx.inbox, key, data.replace(b"w1_0", b"w1_X"))
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.FAILED
    assert [e.code for e in record.errors.data] == ["input_changed"]
    assert engine.runs == []
    assert list(ctx.queue.entries()) == []
    assert list(ctx.store.list(ctx.outbox)) == []


def test_an_input_changed_mid_pass_fails_its_batch_alone(make_context, submit, make_tenant, make_jsonl, drop_job) -> None:
    """A tenant rewriting its own input while its batch runs fails that batch; the others of its group finish."""
    ctx = make_context(DROPBATCH_CHUNK_LINES="2")
    victim = submit(ctx, "j1", 4)
    rival_key = make_tenant(ctx, "rival", "enterprise")[1]
    rival = admit_manifest(ctx, drop_job(ctx, "rival", "r1", make_jsonl(4), key=rival_key).ref)
    assert rival is not None
    key = rival.inputs[0].key

    def rewrite(i: int) -> None:
        if i == 0:  # the first answer is out: the rival's chunks are not all read yet
            data, _ = ctx.store.get(ctx.inbox, key)
            ctx.store.put(ctx.inbox, key, data.replace(b"w3_0", b"w3_X"))

    engine = Wrapped(EchoEngine(ctx.store, ctx.settings), rewrite)
    assert Runner(ctx, engine).run_once() == 2
    assert ctx.batches.get("acme", victim.id).status == BatchStatus.COMPLETED
    failed = ctx.batches.get("rival", rival.id)
    assert failed.status == BatchStatus.FAILED and [e.code for e in failed.errors.data] == ["input_changed"]
    assert list(ctx.queue.entries()) == []
    assert ctx.quotas.usage("rival", "enterprise")[0] == 4  # lines ran for it: the hour still counts them


@contextmanager
def running(runner: Runner, gate: threading.Event) -> Iterator[tuple[threading.Event, threading.Thread]]:
    """The runner's service loop in a thread; on the way out the gate opens and the loop must stop within 30 s."""
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        yield stop, thread
    finally:
        gate.set()
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def completed(ctx, *batches, seconds: float = 10) -> bool:
    """Whether every one of ``batches`` (of tenant acme) reaches completed within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(ctx.batches.get("acme", b.id).status == BatchStatus.COMPLETED for b in batches):
            return True
        time.sleep(0.01)
    return False


def test_a_batch_that_arrives_while_another_runs_starts_at_once(make_context, submit) -> None:
    """The engine stays warm and takes several groups: a small batch never waits for a big one's pass."""
    ctx = make_context(DROPBATCH_CHUNK_LINES=2, DROPBATCH_RUNNER_POLL_SECONDS="0.01")
    big = submit(ctx, "big", 6, words=3, max_tokens=2)
    big_started, gate = threading.Event(), threading.Event()
    echo = EchoEngine(ctx.store, ctx.settings)

    def hold_big(i: int) -> None:
        big_started.set()
        assert gate.wait(timeout=30), "the test never opened the gate"

    class Gated(Wrapped):
        def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
            if any(c.batch_id == big.id for c in chunks):
                yield from Wrapped(self.inner, hold_big).run(chunks)
            else:
                yield from self.inner.run(chunks)

    with running(Runner(ctx, Gated(echo, lambda i: None)), gate) as (stop, runner):
        assert big_started.wait(timeout=10)
        small = submit(ctx, "small", 2, words=3, max_tokens=2)
        assert completed(ctx, small)
        assert ctx.batches.get("acme", big.id).status == BatchStatus.IN_PROGRESS, "big is still held by the gate"
        gate.set()
        assert completed(ctx, big)


def test_the_last_free_slot_takes_a_small_batch_not_the_next_big_one(make_context, submit) -> None:
    """Two slots, one busy with a big batch: a small batch queued behind another big one still starts at once."""
    ctx = make_context(DROPBATCH_CHUNK_LINES=2, DROPBATCH_RUNNER_POLL_SECONDS="0.01", DROPBATCH_RUNNER_GROUPS=2,
                       DROPBATCH_COALESCE_MAX_LINES=6, DROPBATCH_SMALL_BATCH_LINES=4)
    big = submit(ctx, "big", 6, words=3, max_tokens=2)
    started, gate = threading.Event(), threading.Event()
    held: set[str] = set()

    def hold(i: int) -> None:
        started.set()
        assert gate.wait(timeout=30), "the test never opened the gate"

    class Gated(Wrapped):
        def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
            if len(chunks) > 1:  # a big batch's run: held until the gate opens
                held.update(c.batch_id for c in chunks)
                yield from Wrapped(self.inner, hold).run(chunks)
            else:
                yield from self.inner.run(chunks)

    with running(Runner(ctx, Gated(EchoEngine(ctx.store, ctx.settings), lambda i: None)), gate) as (stop, runner):
        assert started.wait(timeout=10)
        second = submit(ctx, "big-2", 6, words=3, max_tokens=2)  # ahead of the small one in the queue
        small = submit(ctx, "small", 1, words=3, max_tokens=2)
        assert completed(ctx, small)
        assert second.id not in held, "the big batch was left for a later claim"
        gate.set()
        assert completed(ctx, big, second)


def test_a_group_that_ends_frees_its_slot_at_once_and_a_stop_ends_the_wait(make_context, submit) -> None:
    """One slot, a 60 s poll: the batch queued behind the running one starts when that one ends, not a poll later."""
    ctx = make_context(DROPBATCH_RUNNER_POLL_SECONDS="60", DROPBATCH_POLL_SECONDS="60", DROPBATCH_RUNNER_GROUPS=1)
    first = submit(ctx, "first", 2, words=3, max_tokens=2)
    started, gate = threading.Event(), threading.Event()

    def hold(i: int) -> None:
        started.set()
        assert gate.wait(timeout=30), "the test never opened the gate"

    class Gated(Wrapped):
        def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
            each = hold if any(c.batch_id == first.id for c in chunks) else self.each
            yield from Wrapped(self.inner, each).run(chunks)

    with running(Runner(ctx, Gated(EchoEngine(ctx.store, ctx.settings), lambda i: None)), gate) as (stop, runner):
        assert started.wait(timeout=10)
        second = submit(ctx, "second", 2, words=3, max_tokens=2)  # the only slot is busy: it waits
        gate.set()
        assert completed(ctx, second)
        stopped = time.monotonic()
        stop.set()
        runner.join(timeout=10)
        assert time.monotonic() - stopped < 10, "the idle runner waited out its poll before seeing the stop"


class Recording(EchoEngine):
    """EchoEngine that keeps the chunks of every run, as the runner stamped them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[WorkChunk]] = []

    def run(self, chunks):
        self.seen.append(list(chunks))
        return super().run(chunks)


def test_the_runner_stamps_each_chunk_by_tenant_tier_and_deadline(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=4)
    record = submit(ctx, "j1", 10)
    engine = Recording(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    [chunks] = engine.seen
    step = STRIDE // 8  # acme is an enterprise tenant
    assert [(c.priority, c.priority_step) for c in chunks] == [(0, step), (4 * step, step), (8 * step, step)]
    assert {c.urgent_priority for c in chunks} == {URGENT + record.expires_at}
    assert ctx.batches.get("acme", record.id).status == BatchStatus.COMPLETED
    fcfs = make_context(DROPBATCH_SCHEDULING_POLICY="fcfs")
    submit(fcfs, "j2", 3)
    plain = Recording(fcfs.store, fcfs.settings)
    Runner(fcfs, plain).run_once()
    assert {c.priority_step for c in plain.seen[0]} == {0}


@pytest.mark.parametrize("progress_seconds", [0, 3600])  # 3600: closed at its last line, not at a progress tick
def test_a_small_batch_closes_while_the_big_one_of_its_group_still_runs(
    make_context, make_tenant, make_jsonl, drop_job, submit, progress_seconds
) -> None:
    ctx = make_context(DROPBATCH_CHUNK_LINES=5)
    small = submit(ctx, "small", 3)  # acme, enterprise
    _, key = make_tenant(ctx, "zed", "free")
    big = admit_manifest(ctx, drop_job(ctx, "zed", "big", make_jsonl(40), key=key).ref)
    assert big is not None
    seen: list[str] = []
    small_status_after_its_lines: list[BatchStatus] = []

    def each(i: int) -> None:
        if seen.count(small.id) == 3 and not small_status_after_its_lines:
            small_status_after_its_lines.append(ctx.batches.get("acme", small.id).status)

    class Watching(Wrapped):
        def run(self, chunks):
            for result in super().run(chunks):
                seen.append(result.batch_id)
                yield result

    Runner(ctx, Watching(EchoEngine(ctx.store, ctx.settings), each), progress_seconds=progress_seconds).run_once()
    # Both tenants start at the same virtual time: the small batch never waits for all 40 lines.
    assert seen.index(small.id) < 10
    assert small_status_after_its_lines == [BatchStatus.COMPLETED]  # closed before the big batch's last line
    assert seen.count(big.id) == 40 and seen[-1] == big.id
    assert ctx.batches.get("zed", big.id).status == BatchStatus.COMPLETED
    assert list(ctx.queue.entries()) == []


def test_a_slot_kept_for_small_jobs_leaves_big_batches_queued(make_context, submit) -> None:
    ctx = make_context(DROPBATCH_SMALL_BATCH_LINES=10)
    big = submit(ctx, "big", 30)
    small = submit(ctx, "small", 5)
    runner = Runner(ctx, EchoEngine(ctx.store, ctx.settings))
    group = runner.claim_group(largest=ctx.settings.limits.small_batch_lines)
    assert [c.record.id for c in group] == [small.id]
    runner.run_group(group)
    assert [e.batch_id for e in ctx.queue.entries()] == [big.id]


def test_the_runner_caps_malloc_arenas_unless_the_operator_set_them(monkeypatch):
    """glibc (this machine's and the image's C library) takes the cap; an operator's MALLOC_ARENA_MAX rules."""
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert cap_malloc_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is False
