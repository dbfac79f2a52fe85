"""Crash resume: a real runner process is killed with SIGKILL at random points and restarted.

The campaign lives in soak.py (also `make soak`, with 20+ kills); here it runs a
handful of kills, and the outbox is checked line by line for exactly-once.
"""

from __future__ import annotations

import random

import pytest
from soak import kill_campaign, request_lines, submit, tokens_of_line

from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

KILLS = 3
LINES = 3000  # long enough that even a quiet machine cannot finish before the kills


def test_kill_9_at_random_points_loses_and_duplicates_nothing(stack, tmp_path):
    service = stack.settings.service.model_copy(update={"lease_seconds": 6, "poll_seconds": 0.5})
    engine = stack.settings.engine.model_copy(update={"batch_size": 16})  # small Ray batches: steady commits
    settings = stack.settings.model_copy(update={"service": service, "engine": engine})
    stack.ctx.tenants.create("e2e-kill", "enterprise")
    ref = submit(stack.ctx, "e2e-kill", "kill", request_lines(LINES, "kill"))
    Watcher(stack.ctx).run_once()

    tally = kill_campaign(
        stack.ctx, settings, ref, kills=KILLS, rng=random.Random(20261126), log_dir=tmp_path, say=print
    )
    print("\n" + tally.table())

    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert tally.kills >= 2, "the campaign must actually kill the runner mid-batch"
    assert (tally.lost, tally.duplicated, tally.unexpected) == (0, 0, 0)
    assert record.request_counts.total == LINES
    assert record.request_counts.completed + record.request_counts.failed == LINES
    assert record.usage.output_tokens == sum(tokens_of_line(i) for i in range(LINES))
    # checkpoints are cleaned up once the outbox holds the results
    leftovers = list(stack.ctx.store.list(stack.settings.storage.control_bucket, f"work/{record.id}/"))
    assert leftovers == []
