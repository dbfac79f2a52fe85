"""SLA-aware admission on the real stack: the rate the warm engine was measured at decides a 1h batch.

A real pass through the session's warm vLLM gives the runner its measured rate, which
it publishes as it does while serving (``observe_queue``). The 1h window is shortened
by setting (``DROPBATCH_COMPLETION_WINDOWS``) so that a few hundred lines cannot make it
at that rate: no huge batch and no faked rate. The same batch is rejected with
``deadline_unreachable`` (reject, the default) and admitted with a ``deadline_at_risk``
warning (warn); the watcher's metric counts both. While the admitted one waits, the
runner's projected-overrun gauge, which DropbatchSlaAtRisk alerts on, is already
positive with its deadline still ahead: the alert is raised before the miss, not after.
"""

from __future__ import annotations

import math

import pytest
from soak import request_lines, submit

from dropbatch.context import Context
from dropbatch.deadlines import measured_throughput
from dropbatch.models import BatchStatus
from dropbatch.observability.metrics import Metrics
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

TENANT = "e2e-sla"
WINDOW = 60  # seconds of the "1h" window in this test's settings
WINDOWS = {"24h": 86_400, "1h": WINDOW}
OWNER = "e2e-sla-runner"


def with_limits(stack, **limits) -> Context:
    """A context over the stack's buckets whose limits differ by ``limits``."""
    settings = stack.settings.model_copy(update={"limits": stack.settings.limits.model_copy(update=limits)})
    return Context.from_settings(settings, clock=stack.clock)


def test_a_1h_batch_the_measured_rate_cannot_finish_is_rejected_or_warned(stack) -> None:
    ctx = stack.ctx
    ctx.tenants.create(TENANT, "premium")  # a tier that may use the 1h window
    runner_metrics = Metrics("runner")
    runner = Runner(ctx, stack.engine, owner=OWNER, metrics=runner_metrics)
    submit(ctx, TENANT, "measured", request_lines(40, "measured"))
    Watcher(ctx, metrics=Metrics("watcher")).run_once()
    assert runner.run_once() == 1
    runner.observe_queue()  # what the runner's queue-metrics thread does every few seconds while serving
    rate = measured_throughput(ctx.records, ctx.clock(), ctx.settings.limits.throughput_max_age_seconds)
    assert rate is not None and rate > 0
    lines = math.ceil(rate * WINDOW * 1.5)  # 1.5 windows of work at the measured rate

    record, counted = admit_1h(stack, "reject", "too-late", lines)
    assert record.status == BatchStatus.FAILED
    error = record.errors.data[0]
    assert (error.code, error.param) == ("deadline_unreachable", "completion_window")
    assert f"{rate:.1f} request lines/s" in error.message and "1h completion window" in error.message
    assert counted.labels("rejected", "deadline_unreachable")._value.get() == 1
    assert record.id not in [e.batch_id for e in ctx.queue.entries()]

    record, counted = admit_1h(stack, "warn", "at-risk", lines)
    assert record.status == BatchStatus.IN_PROGRESS
    assert [w.code for w in record.warnings] == ["deadline_at_risk"]
    assert counted.labels("admitted", "deadline_at_risk")._value.get() == 1
    lenient = with_limits(stack, completion_windows=WINDOWS, sla_admission="warn")
    try:
        Runner(lenient, stack.engine, owner=OWNER, metrics=runner_metrics).observe_queue()
        assert runner_metrics.projected_overrun._value.get() > 0  # DropbatchSlaAtRisk's expression holds
        assert record.expires_at - lenient.now() > 0  # ... with the deadline still ahead
    finally:
        # Leave the session's queue as found: the warned batch is cancelled before it runs.
        lenient.batches.update(TENANT, record.id, lambda b: b.transition(BatchStatus.CANCELLING, lenient.now()))
        Runner(lenient, stack.engine, owner=OWNER).run_once()
    assert lenient.batches.get(TENANT, record.id).status == BatchStatus.CANCELLED


def admit_1h(stack, sla_admission: str, job: str, lines: int):
    """Upload ``lines`` chat lines asking for the (shortened) 1h window, let a watcher with ``sla_admission``
    take them: the batch's record and the watcher's manifest counter."""
    ctx = with_limits(stack, completion_windows=WINDOWS, sla_admission=sla_admission)
    watcher = Watcher(ctx, metrics=Metrics("watcher"))
    ref = submit(ctx, TENANT, job, request_lines(lines, job), window="1h")
    watcher.run_once()
    return ctx.batches.for_job(ref), watcher.metrics.manifests
