"""What the engine works on next: stride fair share by tier weight, deadlines at risk first (fake clock)."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_fields import CHAT, COMPLETIONS, EMBEDDINGS, refused
from test_warm_engine_parts import chunk

from dropbatch.engine.base import WorkChunk
from dropbatch.settings import Settings
from runner.engine.flags import vllm_args
from runner.engine.stream import request_rows
from runner.schedule import STRIDE, URGENT, Demand, EngineGate, FairShare, engine_gate_limit, line_priority

WEIGHTS = {"free": 1.0, "basic": 2.0, "premium": 4.0, "enterprise": 8.0}
FAR = 10**9  # a deadline nobody is near


def work(batch_id: str, lines: int, index: int = 0) -> WorkChunk:
    return WorkChunk(batch_id=batch_id, chunk=index, content_sha256="c" * 64, endpoint="/v1/chat/completions",
                     model="m", bucket="inbox", key="k", start=0, end=1, first_line=1, lines=lines, sha256="s",
                     created=0)


def priorities(chunks: list[WorkChunk], now: float) -> list[tuple[int, str]]:
    """(priority, batch) for every line of the pass, in the order vLLM serves them."""
    lines = [(line_priority(c, i, now), c.batch_id) for c in chunks for i in range(c.lines)]
    return sorted(lines, key=lambda item: item[0])  # stable: ties keep arrival order, as vLLM does


def serve(fair: FairShare, chunks: list[WorkChunk], lines: int) -> None:
    """The engine answers the first ``lines`` lines of the first chunk."""
    for done in range(1, lines + 1):
        fair.served(chunks[0], done)


def test_a_newcomer_shares_the_engine_at_once_by_tier_weight(make_clock):
    clock = make_clock(1000)
    fair = FairShare(WEIGHTS, margin_seconds=0, clock=clock)
    big = fair.stamp([work("a", 500, i) for i in range(40)], {"a": Demand("tenant-a", "basic", FAR, 20_000)})
    serve(fair, big, 100)  # the engine is 100 lines into A's 20,000
    small = fair.stamp([work("b", 50)], {"b": Demand("tenant-b", "premium", FAR, 50)})
    order = [batch for _, batch in priorities(big + small, clock())]
    upcoming = order[100:]  # what is left to serve after the 100 answered lines
    # premium weighs twice basic: B's 50 lines are done within the next 75 (50 B, 25 A), not after 19,900 of A
    assert upcoming[:75].count("b") == 50
    assert 24 <= upcoming[:75].count("a") <= 25


def test_equal_tiers_alternate_and_a_heavier_tier_gets_its_multiple(make_clock):
    fair = FairShare(WEIGHTS, margin_seconds=0, clock=make_clock())
    chunks = fair.stamp([work("a", 400), work("b", 400), work("c", 400)],
                        {"a": Demand("ta", "free", FAR, 400), "b": Demand("tb", "free", FAR, 400),
                         "c": Demand("tc", "enterprise", FAR, 400)})
    first = [batch for _, batch in priorities(chunks, 0)][:500]
    assert first.count("c") == 400  # weight 8 against 1 + 1: all of C within the first 500 lines
    assert abs(first.count("a") - first.count("b")) <= 1  # the two free tenants alternate


def test_idle_time_earns_no_credit(make_clock):
    fair = FairShare(WEIGHTS, margin_seconds=0, clock=make_clock())
    fair.stamp([work("b1", 10)], {"b1": Demand("tb", "basic", FAR, 10)})
    a = fair.stamp([work("a", 1000)], {"a": Demand("ta", "basic", FAR, 1000)})
    serve(fair, a, 600)  # B was idle while 600 of A's lines ran
    b = fair.stamp([work("b2", 100)], {"b2": Demand("tb", "basic", FAR, 100)})
    assert b[0].priority == fair.global_time == a[0].priority + 599 * a[0].priority_step
    upcoming = [batch for _, batch in priorities(a + b, 0)][600:]
    # B shares from now on (alternating with A), instead of running all 100 lines on credit from its idle time
    assert upcoming[:20].count("b2") == 10


def test_a_tenants_next_pass_queues_behind_its_own_earlier_work(make_clock):
    fair = FairShare(WEIGHTS, margin_seconds=0, clock=make_clock())
    first = fair.stamp([work("a1", 100)], {"a1": Demand("ta", "premium", FAR, 100)})
    second = fair.stamp([work("a2", 100)], {"a2": Demand("ta", "premium", FAR, 100)})
    assert second[0].priority == first[0].priority + 100 * (STRIDE // 4)


def test_a_deadline_at_risk_goes_first_earliest_deadline_first(make_clock):
    clock = make_clock(10_000)
    fair = FairShare(WEIGHTS, margin_seconds=60, clock=clock)
    warm = fair.stamp([work("w", 100)], {"w": Demand("tw", "free", FAR, 100)})
    for done in range(1, 101):  # 100 lines over 10 s: 10 lines/s measured
        fair.served(warm[0], done)
        if done % 10 == 0:
            clock.advance(1)
    assert fair.throughput() == 10.0
    now = clock()
    demands = {
        "fair": Demand("tf", "enterprise", FAR, 50),
        "late": Demand("tl", "free", int(now) + 60 + 510, 1000),  # 1000 lines need 100 s; due in 570 s
        "later": Demand("tm", "free", int(now) + 60 + 50, 1000),  # 1000 lines need 100 s: already at risk
        "soon": Demand("ts", "free", int(now) + 60 + 20, 1000),  # at risk, and due first
    }
    chunks = fair.stamp([work(name, 10) for name in demands], demands)
    assert [c.batch_id for c in chunks][:2] == ["soon", "later"]  # fed to the engine in urgency order
    first = priorities(chunks, now)
    assert [batch for _, batch in first[:20]] == ["soon"] * 10 + ["later"] * 10
    assert first[0][0] == URGENT + demands["soon"].deadline
    # "late" is not at risk yet (1000 lines at 10/s end 410 s before its margin); it becomes urgent by itself
    late = next(c for c in chunks if c.batch_id == "late")
    assert line_priority(late, 0, now) >= 0
    assert line_priority(late, 0, late.urgent_at) == URGENT + demands["late"].deadline
    assert late.urgent_at == demands["late"].deadline - 60 - 100


def test_without_a_measured_throughput_only_the_margin_counts(make_clock):
    clock = make_clock(5000)
    fair = FairShare(WEIGHTS, margin_seconds=30, clock=clock)
    assert fair.throughput() is None
    [stamped] = fair.stamp([work("a", 10)], {"a": Demand("ta", "basic", 5100, 10)})
    assert stamped.urgent_at == 5070


def test_lines_are_sent_grouped_by_prefix_with_priorities_in_that_order():
    system = {"role": "system", "content": "You answer in French. " * 20}
    lines = []
    for i in range(6):
        messages = [system, {"role": "user", "content": f"q{i}"}] if i % 2 else [{"role": "user", "content": f"q{i}"}]
        lines.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "dropbatch-tiny", "messages": messages}})
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    plain = request_rows(chunk(data), data, "engine-0", max_line_bytes=1 << 20, now=0)
    assert [r["custom_id"] for r in plain] == ["r1", "r3", "r5", "r0", "r2", "r4"]  # the shared system prompt together
    assert all("priority" not in json.loads(r["body_json"]) for r in plain)  # unstamped: vLLM's default
    as_filed = request_rows(chunk(data), data, "engine-0", max_line_bytes=1 << 20, by_prefix=False, now=0)
    assert [r["custom_id"] for r in as_filed] == [f"r{i}" for i in range(6)]
    stamped = request_rows(chunk(data, priority=7, priority_step=3, urgent_at=100.0, urgent_priority=-5), data,
                           "engine-0", max_line_bytes=1 << 20, now=0)
    assert [json.loads(r["body_json"])["priority"] for r in stamped] == [7, 10, 13, 16, 19, 22]
    late = request_rows(chunk(data, priority=7, priority_step=3, urgent_at=100.0, urgent_priority=-5), data,
                        "engine-0", max_line_bytes=1 << 20, now=100)
    assert {json.loads(r["body_json"])["priority"] for r in late} == {-5}


def test_the_engine_runs_vllms_priority_scheduler_with_prefix_caching():
    args = vllm_args(Settings.from_env({}).engine)
    assert args[args.index("--scheduling-policy") + 1] == "priority" and "--enable-prefix-caching" in args
    fcfs = vllm_args(Settings.from_env({"DROPBATCH_SCHEDULING_POLICY": "fcfs",
                                        "DROPBATCH_ENABLE_PREFIX_CACHING": "auto"}).engine)
    assert fcfs[fcfs.index("--scheduling-policy") + 1] == "fcfs"
    assert not any("prefix-caching" in a for a in fcfs)
    weights = Settings.from_env({"DROPBATCH_TIER_WEIGHTS": "free=0.5,gold=16"}).limits.tier_weights
    assert weights == {**WEIGHTS, "free": 0.5, "gold": 16.0}


@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, EMBEDDINGS])
def test_a_line_cannot_set_its_own_priority(endpoint: str) -> None:
    error = refused(endpoint, {"priority": -(2**62)})  # only the runner stamps it, after admission
    assert (error.code, error.param) == ("unknown_parameter", "body.priority")


def test_the_engine_gate_lets_the_lowest_priority_number_in_first_with_a_bound_inside() -> None:
    """A big batch fills the engine; a small batch arriving later goes in before the big batch's queued rest."""

    async def scenario() -> tuple[list[str], int]:
        gate = EngineGate(2)
        order: list[str] = []
        most_inside = 0
        release = asyncio.Event()

        async def request(name: str, priority: int) -> None:
            nonlocal most_inside
            async with gate.admitted(priority):
                order.append(name)
                most_inside = max(most_inside, gate.inside)
                await release.wait()

        big = [asyncio.create_task(request(f"a{i}", 10 + i)) for i in range(5)]
        await asyncio.sleep(0)
        # The small batch's stamps start where the engine has got to (a2): it interleaves with the rest,
        # a tie going to the earlier arrival.
        small = [asyncio.create_task(request(f"b{i}", 12 + i)) for i in range(2)]
        timed_out = asyncio.create_task(request("gone", 0))
        await asyncio.sleep(0)
        timed_out.cancel()  # a request whose timeout ends while it waits gives no turn back
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*big, *small, return_exceptions=True)
        assert gate.inside == 0
        return order, most_inside

    order, most_inside = asyncio.run(scenario())
    assert most_inside == 2
    assert engine_gate_limit(256) == 320  # a running batch and a quarter more
    assert order == ["a0", "a1", "a2", "b0", "a3", "b1", "a4"]
