"""The warm engine on real vLLM: started once, faithful to varied bodies, supervised.

Every test shares the session's one engine (the ``stack`` fixture); none starts another.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest
import ray
from soak import engine_processes, submit

from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

MODEL = "dropbatch-tiny"


def varied_lines(n: int, seed: int) -> list[dict]:
    """Chat lines whose optional fields are present on some lines and absent on others."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        body: dict = {"model": MODEL, "messages": [{"role": "user", "content": f"varied {i} " * rng.randint(1, 20)}]}
        if rng.random() < 0.5:
            body["seed"] = rng.randint(0, 2**31)
        if rng.random() < 0.5:
            body["max_tokens"] = rng.randint(1, 24)
        if rng.random() < 0.4:
            body["stop"] = rng.choice(["x", ["a", "bb"], ["\n"]])
        if rng.random() < 0.4:
            body["top_p"] = rng.choice([0.5, 1, 0.9])
        if rng.random() < 0.4:
            body["temperature"] = rng.choice([0, 0.7, 1, 2])
        if rng.random() < 0.3:
            body["logprobs"] = True
            body["top_logprobs"] = rng.randint(0, 5)
        if rng.random() < 0.3:
            body["presence_penalty"] = rng.uniform(-2, 2)
        if rng.random() < 0.2:
            body["max_completion_tokens"] = rng.randint(1, 16)
            body.pop("max_tokens", None)
        lines.append({"custom_id": f"v-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return lines


def outputs(stack, record) -> dict[str, dict]:
    data, _ = stack.ctx.store.get(stack.ctx.outbox, record.result.output_key)
    errors, _ = stack.ctx.store.get(stack.ctx.outbox, record.result.errors_key)
    return {line["custom_id"]: line for line in map(json.loads, (data + errors).splitlines())}


def engine_starts(stack) -> dict[str, float]:
    handles = stack.engine.engine._actors
    return {name: ray.get(handle.stats.remote())["started_at"] for name, handle in handles.items()}


@pytest.mark.parametrize("seed", [1, 2])
def test_bodies_whose_optional_fields_vary_all_come_back_as_asked(stack, seed):
    stack.ctx.tenants.create(f"e2e-varied-{seed}", "enterprise")
    lines = varied_lines(150, seed)
    before = engine_starts(stack)
    ref = submit(stack.ctx, f"e2e-varied-{seed}", "varied", lines)
    stack.drain()
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    got = outputs(stack, record)
    failed = [line for line in got.values() if line["error"] or line["response"]["status_code"] != 200]
    assert (record.request_counts.completed, record.request_counts.failed) == (150, 0), failed[:2]
    for line in lines:
        body, answer = line["body"], got[line["custom_id"]]["response"]["body"]
        choice = answer["choices"][0]
        budget = body.get("max_completion_tokens", body.get("max_tokens"))
        if budget is not None:
            assert answer["usage"]["completion_tokens"] <= budget
        if body.get("logprobs"):
            content = choice["logprobs"]["content"]
            assert content and all(len(t["top_logprobs"]) == body["top_logprobs"] for t in content)
        else:
            assert choice["logprobs"] is None
    assert engine_starts(stack) == before, "the warm engine served the batch without starting again"


def test_a_stalled_engine_is_restarted_and_its_lines_retried(stack):
    """SIGSTOP the engine's processes mid-run: the watchdog restarts it; every line still comes back once."""
    engine = stack.engine.engine
    stack.ctx.tenants.create("e2e-stall", "enterprise")
    lines = [
        {"custom_id": f"s-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"stall {i}"}], "max_tokens": 32,
                  "temperature": 0, "ignore_eos": True}}
        for i in range(600)
    ]
    ref = submit(stack.ctx, "e2e-stall", "stall", lines)
    Watcher(stack.ctx).run_once()
    stopped: list[int] = []
    done = threading.Event()

    def freeze_once_busy() -> None:
        """SIGSTOP the engine's processes as soon as it has requests in flight."""
        handle = next(iter(engine._actors.values()))
        while not done.is_set():
            if ray.get(handle.stats.remote())["inflight"] > 0:
                for proc in engine_processes(engine._session):
                    proc.send_signal(signal.SIGSTOP)
                    stopped.append(proc.pid)
                return
            time.sleep(0.05)

    restarts = engine.restarts
    engine.stall_seconds = 5.0
    freezer = threading.Thread(target=freeze_once_busy, daemon=True)
    freezer.start()
    try:
        stack.drain()
    finally:
        done.set()
        freezer.join(timeout=10)
        engine.stall_seconds = stack.settings.engine.stall_seconds
        for pid in stopped:  # whatever the watchdog did not reap
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert stopped, "the engine's processes were stopped"
    assert engine.restarts == restarts + 1, "the watchdog restarted the stalled engine once"
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (600, 0)
    assert sorted(outputs(stack, record)) == sorted(line["custom_id"] for line in lines)


def test_vllm_serves_the_runners_priorities_first(stack):
    """Requests carry ``priority`` into vLLM's priority scheduler: a few urgent ones overtake a queue of others."""
    from runner.engine.server import CHAT, GENERATE
    from runner.engine.stream import engine_name

    engine = stack.engine.engine
    handle = ray.get_actor(engine_name(MODEL, GENERATE, 0))
    seqs = engine._limits[MODEL]["max_num_seqs"]

    def body(tag: str, i: int, priority: int) -> tuple[str, str]:
        return CHAT, json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"{tag} {i}"}],
                                 "max_tokens": 16, "temperature": 0, "ignore_eos": True, "priority": priority})

    def answered_before_the_few(few_priority: int) -> int:
        """Queue 4 × max_num_seqs requests at priority 10, then 8 more; how many finished before those 8."""
        before = ray.get(handle.stats.remote())["finished"]
        queue = handle.answer.remote([body("queue", i, 10) for i in range(4 * seqs)])
        deadline = time.monotonic() + 60
        while ray.get(handle.stats.remote())["inflight"] < 4 * seqs and time.monotonic() < deadline:
            time.sleep(0.02)
        few = ray.get(handle.answer.remote([body("few", i, few_priority) for i in range(8)]))
        finished = ray.get(handle.stats.remote())["finished"] - before
        assert all(row["status"] == 200 for row in few + ray.get(queue))
        return finished - len(few)

    last = answered_before_the_few(100)  # lower priority than the queue: served after it
    first = answered_before_the_few(0)  # higher priority: served as soon as a slot frees
    assert last >= 3 * seqs, last
    assert first <= 2 * seqs, (first, last)
