"""Identical deterministic requests of a batch: computed once, copied with their own ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dropbatch.duplicates import DuplicateFinder, copy_result, is_deterministic
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import EngineError, ObjectNotFound
from dropbatch.ids import completion_id, request_line_id, response_request_id, tool_call_id
from dropbatch.jsonl import error_line, result_line
from dropbatch.models import BatchStatus
from dropbatch.storage.keys import ControlKeys
from runner.service import Runner
from watcher.admission import admit_manifest

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    "endpoint, body, expected",
    [
        (CHAT, {}, False),  # OpenAI's default temperature is 1: sampled
        (CHAT, {"temperature": 0}, True),
        (CHAT, {"temperature": 0.0, "n": 2}, True),
        (CHAT, {"temperature": 0.7}, False),
        (CHAT, {"temperature": 0.7, "seed": 7}, True),
        (CHAT, {"seed": None}, False),
        ("/v1/completions", {"seed": 0}, True),
        ("/v1/responses", {}, False),
        ("/v1/embeddings", {}, True),
    ],
)
def test_what_is_deterministic(endpoint: str, body: dict, expected: bool) -> None:
    assert is_deterministic(endpoint, body) is expected


def test_finder_keeps_first_occurrences_and_never_sampled_lines() -> None:
    finder = DuplicateFinder(CHAT)
    same = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    reordered = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    sampled = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    finder.add(0, "a", same)
    finder.add(0, "b", sampled)
    finder.add(0, "c", reordered)  # same request, other key order
    finder.add(0, "d", sampled)  # sampled twice: both run
    finder.add(1, "e", {**same, "temperature": 0, "max_tokens": 3})
    finder.add(1, "f", same)
    found = finder.result()
    assert finder.sampled
    assert set(found.chunks) == {0, 1}
    assert found.chunks[0].keep == ["a", "b", "d"] and found.chunks[0].copies == {"c": "a"}
    assert found.chunks[1].keep == ["e"] and found.chunks[1].copies == {"f": "a"}
    assert found.count == 2 and found.copy_counts() == {"a": 2}


def test_a_chunk_of_nothing_but_copies_still_runs_one_line() -> None:
    finder = DuplicateFinder("/v1/embeddings")
    finder.add(0, "a", {"input": "x"})
    finder.add(1, "b", {"input": "x"})
    finder.add(1, "c", {"input": "x"})
    finder.add(2, "d", {"input": "y"})  # a chunk with no copies is not listed
    found = finder.result()
    assert set(found.chunks) == {1}
    assert found.chunks[1].keep == ["b"] and found.chunks[1].copies == {"c": "a"}


def test_copies_save_their_cost_except_one_kept_to_run_its_chunk() -> None:
    finder = DuplicateFinder("/v1/embeddings")
    finder.add(0, "a", {"input": ["x", "y"]}, cost=2)
    finder.add(0, "b", {"input": ["x", "y"]}, cost=2)  # a copy in a chunk that runs: costs nothing
    finder.add(1, "c", {"input": ["x", "y"]}, cost=2)  # kept: chunk 1 has nothing else to run
    finder.add(1, "d", {"input": ["x", "y"]}, cost=2)
    finder.result()
    assert finder.saved_requests == 4


def test_disabled_finder_only_tells_sampled() -> None:
    finder = DuplicateFinder(CHAT, enabled=False)
    finder.add(0, "a", {"temperature": 0})
    finder.add(0, "b", {"temperature": 0})
    assert finder.result().count == 0 and not finder.sampled


def test_copy_gets_its_own_ids() -> None:
    sha = "ab" * 32
    body = {
        "id": completion_id(sha, "orig", "chatcmpl"),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"content": "x", "tool_calls": [{"id": tool_call_id(sha, "orig", 0, 0)}]}}],
    }
    line = result_line(sha, "orig", 200, body)
    copied = copy_result(line, "dup", sha)
    assert copied["custom_id"] == "dup" and copied["id"] == request_line_id(sha, "dup")
    assert copied["response"]["request_id"] == response_request_id(sha, "dup")
    assert copied["response"]["body"]["id"] == completion_id(sha, "dup", "chatcmpl")
    assert copied["response"]["body"]["choices"][0]["message"]["tool_calls"][0]["id"] == tool_call_id(sha, "dup", 0, 0)
    assert copied["response"]["body"]["choices"][0]["message"]["content"] == "x"
    assert line["custom_id"] == "orig" and line["response"]["body"]["id"] == body["id"]  # the original is untouched
    responses = copy_result(result_line(sha, "orig", 200, {"id": completion_id(sha, "orig", "resp", "_")}), "dup", sha)
    assert responses["response"]["body"]["id"] == completion_id(sha, "dup", "resp", "_")
    failed = copy_result(error_line(sha, "orig", "batch_expired", "late"), "dup", sha)
    assert failed == error_line(sha, "dup", "batch_expired", "late")


COPIES = {3: 0, 7: 1, 11: 2}  # with 4-line chunks, the last line of chunks 0-2 repeats an earlier line


def duplicated_body(i: int, body: dict[str, Any]) -> dict[str, Any]:
    """13 lines at temperature 0, of which 3 (``COPIES``) repeat an earlier line."""
    if i in COPIES:
        body = {**body, "messages": [{"role": "user", "content": f"w{COPIES[i]}_0 w{COPIES[i]}_1"}]}
    return {**body, "temperature": 0}


class Interrupted:
    """EchoEngine calling ``before(i)`` ahead of result ``i``: it may raise (the engine dies) or move the clock."""

    def __init__(self, inner: EchoEngine, before) -> None:
        self.inner, self.before, self.runs = inner, before, inner.runs

    def __enter__(self) -> Interrupted:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks):
        for i, result in enumerate(self.inner.run(chunks)):
            self.before(i)
            yield result


@pytest.fixture
def admit(make_context, make_tenant, make_jsonl, drop_job):
    def factory(n: int = 13, body=duplicated_body, **env: Any):
        ctx = make_context(DROPBATCH_CHUNK_LINES=4, **env)
        _, key = make_tenant(ctx, "acme", "premium")
        job = drop_job(ctx, "acme", "j1", make_jsonl(n, body=body), key=key)
        return ctx, admit_manifest(ctx, job.ref)

    return factory


def outputs(ctx, record) -> dict[str, dict]:
    data, _ = ctx.store.get(ctx.outbox, record.result.output_key)
    return {line["custom_id"]: line for line in map(json.loads, data.splitlines())}


def test_duplicates_run_once_and_every_custom_id_is_answered(admit) -> None:
    ctx, admitted = admit()
    assert admitted.duplicate_lines == 3
    ctx.store.head(ctx.records.bucket, ControlKeys.duplicates(admitted.id))
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert engine.runs == [10]
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (13, 0)
    lines = outputs(ctx, record)
    assert sorted(lines) == sorted(f"req-{i}" for i in range(13))
    sha = record.content_sha256
    for i, o in COPIES.items():
        copy, original = lines[f"req-{i}"], lines[f"req-{o}"]
        assert copy["id"] == request_line_id(sha, f"req-{i}")
        assert copy["response"]["body"]["id"] == completion_id(sha, f"req-{i}", "chatcmpl")
        assert copy["response"]["body"]["choices"] == original["response"]["body"]["choices"]
    assert len({line["response"]["body"]["id"] for line in lines.values()}) == 13
    assert record.usage.input_tokens == 13 * 2  # each line reports its usage, copies too
    with pytest.raises(ObjectNotFound):  # written at admission, removed once finished
        ctx.store.head(ctx.records.bucket, ControlKeys.duplicates(record.id))


def test_duplicates_cost_the_quota_once(admit) -> None:
    """The quota counts engine work: 13 lines of which 3 are copies reserve 10 requests."""
    ctx, admitted = admit()
    assert ctx.quotas.usage("acme", "premium")[0] == 10
    sampled_ctx, _ = admit(body=lambda i, b: duplicated_body(i, b) | {"temperature": 1})
    assert sampled_ctx.quotas.usage("acme", "premium")[0] == 13  # sampled lines all run, so all count


def test_dedup_off_runs_every_line(admit) -> None:
    ctx, admitted = admit(DROPBATCH_DEDUP="0")
    assert admitted.duplicate_lines == 0
    assert ctx.quotas.usage("acme", "premium")[0] == 13
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert engine.runs == [13]
    assert len(outputs(ctx, ctx.batches.get("acme", admitted.id))) == 13


def test_sampled_lines_are_never_deduplicated(admit) -> None:
    ctx, admitted = admit(body=lambda i, b: duplicated_body(i, b) | {"temperature": 1})
    assert admitted.duplicate_lines == 0
    engine = EchoEngine(ctx.store, ctx.settings)
    Runner(ctx, engine).run_once()
    assert engine.runs == [13]


def test_copies_of_a_failed_original_fail_the_same_way(admit) -> None:
    ctx, admitted = admit(DROPBATCH_MAX_RETRIES="0")
    engine = EchoEngine(ctx.store, ctx.settings, fail=lambda row: "boom" if row["custom_id"] == "req-1" else None)
    Runner(ctx, engine).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert (record.request_counts.completed, record.request_counts.failed) == (11, 2)
    data, _ = ctx.store.get(ctx.outbox, record.result.errors_key)
    failed = {line["custom_id"]: line for line in map(json.loads, data.splitlines())}
    assert sorted(failed) == ["req-1", "req-7"]
    assert failed["req-7"]["response"]["status_code"] == failed["req-1"]["response"]["status_code"] == 500


def test_expiry_answers_copies_of_finished_originals_and_expires_the_rest(admit) -> None:
    ctx, admitted = admit()
    def window_ends(i: int) -> None:
        if i == 2:  # req-0 and req-1 answered, then the window ends
            ctx.clock.advance(86_400)

    Runner(ctx, Interrupted(EchoEngine(ctx.store, ctx.settings), window_ends), progress_seconds=0).run_once()
    record = ctx.batches.get("acme", admitted.id)
    assert record.status == BatchStatus.EXPIRED
    lines = outputs(ctx, record)
    data, _ = ctx.store.get(ctx.outbox, record.result.errors_key)
    expired = {line["custom_id"] for line in map(json.loads, data.splitlines())}
    assert set(lines) | expired == {f"req-{i}" for i in range(13)} and not set(lines) & expired
    assert {"req-0", "req-1", "req-3", "req-7"} <= set(lines) and len(expired) >= 5
    for i, o in COPIES.items():  # a copy is answered exactly when its original is
        assert (f"req-{i}" in lines) == (f"req-{o}" in lines)


def test_resumed_runner_counts_copies_from_the_checkpoints(admit) -> None:
    ctx, admitted = admit()
    def engine_dies(i: int) -> None:
        if i == 4:  # chunk 0's originals (req-0..2) are answered and checkpointed
            raise EngineError("engine died")

    with pytest.raises(EngineError):
        Runner(ctx, Interrupted(EchoEngine(ctx.store, ctx.settings), engine_dies), owner="runner-a").run_once()
    checkpoint = ctx.store.head(ctx.records.bucket, ControlKeys.chunk_result(admitted.id, 0))
    # req-0, req-1 and req-2 each settle their copy too (req-3, req-7, req-11), wherever it sits
    assert (checkpoint.metadata["completed"], checkpoint.metadata["failed"]) == ("6", "0")

    ctx.clock.advance(ctx.settings.service.lease_seconds + 1)
    second = EchoEngine(ctx.store, ctx.settings)
    seen: list[int] = []
    runner = Runner(ctx, second, owner="runner-b", progress_seconds=0)
    publish = runner.publish_progress

    def watch(group, keeper):  # the counts the record shows while the batch runs
        stop = publish(group, keeper)
        seen.append(ctx.batches.get("acme", admitted.id).request_counts.completed)
        return stop

    runner.publish_progress = watch
    assert runner.run_once() == 1
    assert second.runs == [7]  # chunks 1-3: 3 + 3 + 1 originals
    assert seen[0] >= 6 and seen == sorted(seen) and max(seen) <= 13
    record = ctx.batches.get("acme", admitted.id)
    assert (record.status, record.request_counts.completed) == (BatchStatus.COMPLETED, 13)
    assert sorted(outputs(ctx, record)) == sorted(f"req-{i}" for i in range(13))
