"""Where a drop-box job's seconds go: each job's steps as a watcher of its objects sees them.

A background thread looks at every submitted job every ``tick`` seconds from the moment
its manifest lands, so a job that finishes while others are still being uploaded is
timed when it finishes (not when the uploads are over), and notes when it first sees:

    uploaded ─▶ record created ─▶ in_progress ─▶ claimed ─▶ completed ─▶ results visible
    (manifest   (the watcher     (admitted and  (a runner's  (record      (output.jsonl in
     put)        opened it)       queued)        lease)       terminal)    the outbox)

The record's own stamps are whole seconds; these are the bench's clock, to ``tick``.
Each look's GET of a batch record is timed too (``s3_gets``): the S3 server's own
latency over the same seconds, so a slow step can be told from a slow S3 server.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

STEPS = ("record", "in_progress", "claimed", "completed", "results")
STEP_NAMES = {
    "record": "upload → record created",
    "in_progress": "record created → in_progress",
    "claimed": "in_progress → claimed",
    "completed": "claimed → completed",
    "results": "completed → results visible",
}


@dataclass
class Job:
    ref: object
    uploaded: float
    seen: dict[str, float] = field(default_factory=dict)
    batch_id: str | None = None
    record: object = None

    @property
    def done(self) -> bool:
        return "results" in self.seen

    def step_seconds(self) -> dict[str, float]:
        """Seconds each step took (a step seen in the same look as the previous one takes 0)."""
        out, last = {}, self.uploaded
        for step in STEPS:
            at = self.seen.get(step, last)
            out[step] = max(0.0, at - last)
            last = max(last, at)
        return out

    @property
    def latency(self) -> float:
        return self.seen["results"] - self.uploaded


class Timeline:
    """Tracks submitted jobs in a thread; ``wait()`` returns once every one has results visible."""

    def __init__(self, ctx, tick: float = 0.1) -> None:
        self.ctx, self.tick = ctx, tick
        self.jobs: list[Job] = []
        self.s3_gets: list[tuple[float, float]] = []  # (when, seconds) of every look's record GET
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="timeline", daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, ref, uploaded: float) -> None:
        with self._lock:
            self.jobs.append(Job(ref, uploaded))

    def wait(self, count: int, timeout: float = 3600) -> list[Job]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.jobs) >= count and all(job.done for job in self.jobs):
                    return list(self.jobs)
            time.sleep(self.tick)
        raise SystemExit("jobs did not finish")

    def _watch(self) -> None:
        while not self._stop.wait(self.tick):
            with self._lock:
                pending = [job for job in self.jobs if not job.done]
            for job in pending:
                self._look(job, time.perf_counter())

    def _look(self, job: Job, now: float) -> None:
        import json

        from dropbatch.errors import NotFound, ObjectNotFound
        from dropbatch.models import BatchStatus
        from dropbatch.storage.keys import ControlKeys, OutputPrefix

        ctx = self.ctx
        if job.batch_id is None:
            try:
                data, _ = ctx.store.get(ctx.settings.storage.control_bucket, ControlKeys.job(job.ref))
            except ObjectNotFound:
                return
            job.batch_id = json.loads(data)["batch_id"]
            job.seen["record"] = now
        try:
            began = time.perf_counter()
            record = ctx.batches.get(job.ref.tenant, job.batch_id)
        except NotFound:
            return
        finally:
            self.s3_gets.append((began, time.perf_counter() - began))
        job.record = record
        if record.status != BatchStatus.VALIDATING:
            job.seen.setdefault("in_progress", now)
        if record.status.is_terminal:
            job.seen.setdefault("claimed", now)  # settled before a look saw its lease
            job.seen.setdefault("completed", now)
            try:
                ctx.store.head(ctx.outbox, OutputPrefix(record.tenant, record.content_sha256 or "").output_key)
            except ObjectNotFound:
                if record.status != BatchStatus.COMPLETED or not record.request_counts.completed:
                    job.seen["results"] = now  # nothing to show (failed, or every line an error)
                return
            job.seen["results"] = now
        elif "in_progress" in job.seen and "claimed" not in job.seen:
            try:
                ctx.store.head(ctx.settings.storage.control_bucket, ControlKeys.lease(job.batch_id))
            except ObjectNotFound:
                return
            job.seen["claimed"] = now


def s3_latency(gets: list[tuple[float, float]], start: float, end: float) -> dict[str, float]:
    """The record GETs timed between ``start`` and ``end``: how many, their median and slowest, in ms."""
    seconds = sorted(took for when, took in gets if start <= when <= end)
    if not seconds:
        return {"gets": 0, "p50_ms": 0.0, "max_ms": 0.0}
    return {"gets": len(seconds), "p50_ms": 1000 * statistics.median(seconds), "max_ms": 1000 * seconds[-1]}


def median_breakdown(jobs: list[Job]) -> dict:
    """The median job (by latency) step by step, and each step's median over all jobs."""
    ordered = sorted(jobs, key=lambda job: job.latency)
    middle = ordered[(len(ordered) - 1) // 2]
    return {
        "median_job": {"latency_s": middle.latency, **{f"{s}_s": v for s, v in middle.step_seconds().items()}},
        "step_medians": {f"{s}_s": statistics.median(job.step_seconds()[s] for job in jobs) for s in STEPS},
    }
