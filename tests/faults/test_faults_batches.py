"""With 10% of all S3 and SQS traffic broken, every batch still completes exactly right.

The jobs are dropped with the real `aws` CLI through the proxy; the watcher (SQS
events + sweep) and the runner (echo engine stand-in) run through it too, each pass
handled the way their ``run`` loops handle it: a pass that fails with a dropbatch
error is logged and tried again (``Watcher.run`` / ``Runner.run``). The proxy is
turned off only to read the results back.
"""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import make_jsonl, make_tenant, read_jsonl
from proxy import FaultPlan

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import DropbatchError
from dropbatch.jsonl import is_success
from dropbatch.models import BatchStatus
from dropbatch.queues import SqsEventQueue, find_queue_url
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

SEED = 20261126
FAULT_RATE = 0.10
CHUNK_LINES = 3
# (tenant, job, lines): several batches of different sizes, two tenants.
JOBS = (("acme", "j1", 10), ("acme", "j2", 7), ("globex", "j1", 12), ("globex", "j2", 5))
MAX_ROUNDS = 60  # watcher pass + runner pass per round; each round makes progress unless faults hit it


def test_every_batch_completes_exactly_once_under_ten_percent_faults(
    make_context, start_proxy, proxied_drop_job, capsys
):
    direct = make_context(DROPBATCH_CHUNK_LINES=str(CHUNK_LINES)).settings
    proxy = start_proxy(FaultPlan(rate=0.0, seed=SEED))
    settings = direct.with_endpoint(proxy.url)
    ctx = Context.from_settings(settings)
    keys = {}
    for tenant in sorted({tenant for tenant, _, _ in JOBS}):
        keys[tenant] = make_tenant(ctx, tenant, tier="premium")[1]  # operator setup, before the faults
    queue_url = find_queue_url(settings.storage)
    assert queue_url is not None

    proxy.set(rate=FAULT_RATE)
    drop = proxied_drop_job(proxy)
    expected = {}
    for tenant, job, n in JOBS:
        lines = make_jsonl(n, prefix=f"{tenant}-{job}")
        ref = drop(ctx, keys[tenant], lines, job=job)
        expected[ref] = lines

    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, queue_url))
    runner = Runner(ctx, EchoEngine(ctx.store, settings))
    failed_passes: Counter[str] = Counter()
    rounds = 0
    while rounds < MAX_ROUNDS and not _all_finished(ctx, expected):
        rounds += 1
        for step in (watcher.run_once, runner.run_once):
            try:
                step()
            except DropbatchError as exc:  # what Watcher.run / Runner.run do: log, try again
                failed_passes[f"{step.__self__.__class__.__name__}:{type(exc).__name__}"] += 1

    faults = proxy.faults()
    counts = proxy.counts()
    proxy.set(rate=0.0)
    with capsys.disabled():
        print(
            f"\n[faults] rate={FAULT_RATE} seed={SEED}: {sum(faults.values())} faults injected {faults}; "
            f"requests s3={counts.get('requests_s3', 0)} sqs={counts.get('requests_sqs', 0)}; "
            f"rounds={rounds}; passes that failed and were retried: {dict(failed_passes) or 0}"
        )
    assert sum(faults.values()) > 0

    for ref, lines in expected.items():
        record = ctx.batches.for_job(ref)
        assert record.status is BatchStatus.COMPLETED, (ref, record.status, record.errors)
        assert record.request_counts.model_dump() == {"total": len(lines), "completed": len(lines), "failed": 0}
        output = read_jsonl(ctx.store.get(ctx.outbox, record.result.output_key)[0])
        assert Counter(line["custom_id"] for line in output) == Counter(line["custom_id"] for line in lines)
        assert all(is_success(line) for line in output)
        by_id = {line["custom_id"]: line for line in output}
        for line in lines:  # the echo engine answers with the prompt's words reversed
            words = line["body"]["messages"][0]["content"].split()
            answer = by_id[line["custom_id"]]["response"]["body"]["choices"][0]["message"]["content"]
            assert answer == " ".join(reversed(words))
    assert list(ctx.queue.entries()) == []


def _all_finished(ctx: Context, expected: dict) -> bool:
    for ref in expected:
        try:
            if not ctx.batches.for_job(ref).status.is_terminal:
                return False
        except DropbatchError:
            return False  # not admitted yet, or the read itself hit a fault
    return True
