"""A dead engine mid-pass (the CPU build's occasional SIGILL, a GPU falling off the bus).

After some real results, the vLLM engine's processes are SIGKILLed. Ray restarts
the engine actor or the pass fails and the runner reruns the unfinished chunks;
either way every custom_id comes back exactly once, and no line is lost to it.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import psutil
import pytest
from soak import engine_processes, request_lines, submit

from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

LINES = 600


def kill_engine(session: str) -> int:
    """SIGKILL this engine's vLLM processes (engine core and/or worker; titles vary by version)."""
    killed = 0
    for proc in engine_processes(session):
        try:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        except psutil.NoSuchProcess:
            continue
    return killed


def test_killing_the_engine_mid_pass_loses_and_duplicates_nothing(stack):
    stack.ctx.tenants.create("e2e-dead-engine", "enterprise")
    ref = submit(stack.ctx, "e2e-dead-engine", "dead", request_lines(LINES, "dead"))
    Watcher(stack.ctx).run_once()
    killed: list[int] = []
    seen_down: list[str] = []  # what the runner's /ready check said while the engine came back

    def watch_ready() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not seen_down:
            problem = stack.engine.engine.problem()
            if problem is not None:
                seen_down.append(problem)
            time.sleep(0.2)

    def kill() -> None:
        killed.append(kill_engine(stack.engine.engine._session))
        threading.Thread(target=watch_ready, daemon=True).start()

    stack.engine.after(100, kill)
    stack.drain()

    assert len(killed) == 1 and killed[0] >= 1, "the running engine's processes were killed"
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (LINES, 0)
    seen: list[str] = []
    for key in (record.result.output_key, record.result.errors_key):
        data, _ = stack.ctx.store.get(stack.ctx.outbox, key)
        seen += [json.loads(line)["custom_id"] for line in data.splitlines()]
    assert sorted(seen) == sorted(f"dead-{i}" for i in range(LINES)), "every custom_id exactly once"
    assert seen_down and "restarting" in seen_down[0], "the runner's /ready said the engine was restarting"
    deadline = time.monotonic() + 120
    while stack.engine.engine.problem() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.engine.engine.problem() is None, "ready again once the restarted engine answers"
