"""What the runner reports to Prometheus: per-line throughput, and the queue, SLA and memory gauges."""

from __future__ import annotations

from dropbatch.context import Context
from dropbatch.deadlines import publish_throughput
from dropbatch.engine.base import LineResult
from dropbatch.models import BatchRecord
from dropbatch.observability.metrics import Metrics
from dropbatch.storage.keys import ControlKeys


def record_line(m: Metrics, record: BatchRecord, result: LineResult, lines: int = 1) -> None:
    """Count one engine answer by tenant, endpoint, model, code: as the ``lines`` request lines it settles
    (the line and its duplicates' copies, as the batch record counts them), and its tokens once (engine work).
    """
    model = record.model or ""
    if result.ok:
        m.requests_completed.labels(record.tenant, record.endpoint, model).inc(lines)
    else:
        m.requests_failed.labels(record.tenant, record.endpoint, model, failure_code(result.line)).inc(lines)
    m.record_tokens(record.tenant, model, result.prompt_tokens, result.completion_tokens)
    m.lines_rate.add(1)


def observe_queue(ctx: Context, m: Metrics, owner: str | None = None) -> dict[str, int]:
    """Refresh the queue and SLA gauges (one listing of the queue and of the leases) and memory.

    With the runner's ``owner`` id, also publishes its recent request lines per second
    for the watcher's SLA-aware admission (``dropbatch.deadlines``). Returns the request
    lines queued (or running) for each model, what engine scaling follows.
    """
    now = ctx.clock()
    window = max(ctx.settings.limits.completion_windows.values())
    entries = list(ctx.queue.entries())
    leased = {key.rsplit("/", 1)[1].removesuffix(".json") for key in ctx.records.list_keys(ControlKeys.LEASE_PREFIX)}
    m.queue_batches.labels("running").set(sum(1 for e in entries if e.batch_id in leased))
    m.queue_batches.labels("queued").set(sum(1 for e in entries if e.batch_id not in leased))
    m.queue_requests.set(sum(e.lines for e in entries))
    legacy = ctx.settings.limits.completion_windows["24h"]  # entries from before created_at was kept
    created = [e.created_at if e.created_at is not None else e.deadline - legacy for e in entries]
    m.oldest_queued_age.set(max((now - at for at in created), default=0))
    m.most_urgent_deadline.set(min((e.deadline - now for e in entries), default=window))
    m.tokens_per_second.set(m.tokens_rate_now())
    rate = m.lines_rate.per_second()
    if owner is not None:
        publish_throughput(ctx.records, owner, rate, now)
    if entries and rate <= 0:
        m.projected_overrun.set(float("nan"))  # no rate yet (engine starting or stalled): no projection
    elif entries:
        ahead = 0
        overrun = float("-inf")
        for entry in entries:  # earliest deadline first: the order the runner works in
            ahead += entry.lines
            overrun = max(overrun, now + ahead / rate - entry.deadline)
        m.projected_overrun.set(overrun)
    else:
        m.projected_overrun.set(-window)
    m.engine_memory.labels("rss").set(process_tree_rss())
    gpu = gpu_memory_used()
    if gpu is not None:
        m.engine_memory.labels("gpu").set(gpu)
    queued: dict[str, int] = {}
    for entry in entries:
        model = entry.model or ctx.settings.engine.model_name
        queued[model] = queued.get(model, 0) + entry.lines
    return queued


def failure_code(line: dict) -> str:
    """The error code of a failed result line (bounded: OpenAI/dropbatch codes only)."""
    if line.get("error"):
        return str(line["error"].get("code") or "error")
    body = (line.get("response") or {}).get("body") or {}
    return str((body.get("error") or {}).get("code") or "error")


def process_tree_rss() -> int:
    """RSS of this process and its children (a local Ray cluster and its vLLM workers)."""
    import psutil

    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total



def gpu_memory_used() -> int | None:
    """Bytes used on this host's GPUs (nvidia-smi), or None without one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(line) for line in out.split() if line.strip().isdigit()) * 1024 * 1024
