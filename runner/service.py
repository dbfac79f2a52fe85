"""The runner: claim queued batches, run them together through one engine pass, finish them.

One ``run_once`` is one pipeline run over every batch it could claim (up to
``coalesce_max_lines``), because engine start-up, not generation, dominates
small jobs. Progress is checkpointed per chunk as results stream back; a runner
that dies loses only its unfinished chunks, which the next lease holder reruns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from dropbatch.context import Context
from dropbatch.engine.base import Engine, LineResult, WorkChunk
from dropbatch.engine.requests import TASK_OF_ENDPOINT
from dropbatch.errors import DropbatchError, EngineError, NotFound, ObjectNotFound
from dropbatch.models import BatchError, BatchRecord, BatchStatus, RequestCounts, RetryConfig
from dropbatch.observability.metrics import Metrics
from dropbatch.queue import Lease, QueueEntry, runner_identity
from dropbatch.results import close_batch, read_summary
from dropbatch.storage.keys import OutputPrefix
from runner.claimed import Claimed, Taken
from runner.finalize import batch_duplicates, finalize, finished_chunks, work_chunks, write_chunk_result
from runner.leases import LeaseKeeper
from runner.observe import observe_queue, record_line
from runner.schedule import Demand, FairShare

log = logging.getLogger("dropbatch.runner")

PROGRESS_EVERY_SECONDS = 1.0
QUEUE_METRICS_EVERY_SECONDS = 5.0


class Runner:
    def __init__(
        self,
        ctx: Context,
        engine: Engine,
        *,
        owner: str | None = None,
        metrics: Metrics | None = None,
        sleep=time.sleep,
        progress_seconds: float = PROGRESS_EVERY_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.engine = engine
        self.owner = owner or runner_identity()
        self.metrics = metrics or Metrics("runner")
        self._stop: threading.Event | None = None
        self._sleep = sleep  # backoff between retry passes when no stop event is given (tests inject it)
        # How often a pass looks at its records (counts out, cancel/expiry/lease in). Ray hands rows
        # over in blocks, so 0 (look after every result) makes a stop land right after a given line.
        self.progress_seconds = progress_seconds
        self._active: set[str] = set()  # batch ids a group of this runner is running now
        self._active_lock = threading.Lock()
        limits = ctx.settings.limits
        # One for every group of this runner: they all feed the same warm engines.
        self.fair = FairShare(limits.tier_weights, margin_seconds=limits.deadline_margin_seconds, clock=ctx.clock)
        self.stamp_priorities = ctx.settings.engine.scheduling_policy == "priority"

    # -- claiming ---------------------------------------------------------------------

    def claim_group(self, largest: int | None = None) -> list[Claimed]:
        """Lease queued batches, earliest deadline first, up to the coalescing limit.

        ``largest``: leave batches of more lines than this to a later claim (a slot kept for small jobs).
        """
        ctx = self.ctx
        limit = ctx.settings.limits.coalesce_max_lines
        group: list[Claimed] = []
        addresses: set[str] = set()
        for entry in ctx.queue.entries():
            if group and sum(c.lines_left for c in group) >= limit:
                break
            if largest is not None and entry.lines > largest:
                continue
            with self._active_lock:
                if entry.batch_id in self._active:
                    continue  # another group of ours runs it (re-claiming would steal our own lease)
                lease = ctx.queue.claim(entry.batch_id, self.owner, ctx.settings.service.lease_seconds)
                if lease is None:
                    continue
                self._active.add(entry.batch_id)
            if self._take(entry, lease, group, addresses) is None:
                with self._active_lock:
                    self._active.discard(entry.batch_id)
        return group

    def _take(self, entry: QueueEntry, lease: Lease, group: list[Claimed], addresses: set[str]) -> Claimed | None:
        """Add the leased batch to ``group`` if it needs the engine (settling it otherwise)."""
        ctx = self.ctx
        try:
            record = ctx.batches.get(entry.tenant, entry.batch_id)
        except NotFound:
            self._done(entry, lease)
            return None
        if self._settle_without_engine(entry, lease, record):
            return None
        if not self._inputs_unchanged(record):
            self._fail(entry, lease, record, "input_changed", "An input object changed after it was admitted.")
            return None
        if record.content_sha256 in addresses:
            ctx.queue.release(lease)  # identical work in this run; the next run answers it from the outbox
            return None
        addresses.add(record.content_sha256 or "")
        done = finished_chunks(ctx, record.id)
        committed = RequestCounts(
            total=record.request_counts.total,
            completed=sum(c.completed for c in done.values()),
            failed=sum(c.failed for c in done.values()),
        )
        duplicates = batch_duplicates(ctx, record)
        remaining = {c.chunk: c for c in work_chunks(ctx, record, duplicates) if c.chunk not in done}
        policy = record.retry_config or RetryConfig(**ctx.settings.retry.model_dump())
        claimed = Claimed(entry, lease, record, remaining, committed, policy=policy, copies=duplicates.copy_counts(),
                          tier=self._tier(record.tenant))
        group.append(claimed)
        return claimed

    def _settle_without_engine(self, entry: QueueEntry, lease: Lease, record: BatchRecord) -> bool:
        """Finish batches that need no engine run; True if ``record`` was settled here."""
        ctx = self.ctx
        final = None
        if record.status.is_terminal:
            self._done(entry, lease)
            return True
        if record.status == BatchStatus.CANCELLING:
            final = BatchStatus.CANCELLED
        elif record.expires_at is not None and ctx.now() >= record.expires_at:
            final = BatchStatus.EXPIRED  # never start a batch already past its deadline
        elif record.status == BatchStatus.FINALIZING:
            final = BatchStatus.COMPLETED  # a runner died while finalizing
        elif record.status != BatchStatus.IN_PROGRESS:
            ctx.queue.release(lease)
            return True
        else:
            summary = read_summary(ctx, OutputPrefix(record.tenant, record.content_sha256 or ""))
            if summary is not None and not summary.partial:
                close_batch(ctx, record, summary, cached=True)
                ctx.quotas.release(record.tenant, record.id)  # answered from the outbox: nothing ran
                self.metrics.batches_finished.labels(BatchStatus.COMPLETED.value).inc()
                self._done(entry, lease)
                return True
            return False
        closed = finalize(ctx, record, final=final)
        if closed.status == BatchStatus.CANCELLED and closed.request_counts.completed == 0:
            ctx.quotas.release(record.tenant, record.id)  # cancelled before any line ran: nothing was used
        self.metrics.batches_finished.labels(closed.status.value).inc()
        self._done(entry, lease)
        return True

    def _tier(self, tenant: str) -> str:
        try:
            return self.ctx.tenants.get(tenant).tier
        except NotFound:
            return ""  # a deleted tenant's queued work still runs, at the smallest share

    def _inputs_unchanged(self, record: BatchRecord) -> bool:
        """The inputs still hold the admitted bytes (each chunk is also sha256-checked when read)."""
        for item, etag in zip(record.inputs, record.input_etags, strict=False):
            try:
                if self.ctx.store.head(self.ctx.inbox, item.key).etag != etag:
                    return False
            except ObjectNotFound:
                return False
        return True

    def _fail(self, entry: QueueEntry, lease: Lease, record: BatchRecord, code: str, message: str) -> None:
        error = BatchError(code=code, message=message)
        self.ctx.batches.update(
            record.tenant, record.id, lambda b: None if b.status.is_terminal else b.fail([error], self.ctx.now())
        )
        self.ctx.quotas.release(record.tenant, record.id)
        self.metrics.batches_finished.labels(BatchStatus.FAILED.value).inc()
        log.warning("batch failed", extra={"tenant": record.tenant, "batch_id": record.id, "code": code})
        self._done(entry, lease)

    def _done(self, entry: QueueEntry, lease: Lease) -> None:
        self.ctx.queue.remove(entry)
        self.ctx.queue.release(lease)

    # -- running ----------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim what is queued, run it through the engine, finish it. Returns batches touched."""
        group = self.claim_group()
        if group:
            self.run_group(group)
        return len(group)

    def run_group(self, group: Sequence[Claimed]) -> None:
        """Run one claimed group through the engine and settle each batch of it."""
        try:
            keeper = LeaseKeeper(self.ctx, [c.lease for c in group])
            keeper.start()
            try:
                self._execute(group, keeper)
            finally:
                keeper.stop()
            for claimed in group:
                if not claimed.settled:
                    self._settle(claimed)
        finally:
            with self._active_lock:
                self._active.difference_update(c.record.id for c in group)

    def _execute(self, group: Sequence[Claimed], keeper: LeaseKeeper) -> None:
        """Engine passes over the group's remaining chunks, then retry passes for failed lines."""
        by_batch = {c.record.id: c for c in group}
        work = [chunk for claimed in group for chunk in claimed.remaining.values()]
        log.info("engine run", extra={"batches": len(group), "lines": sum(c.lines_left for c in group)})
        while work:
            if self._passes(work, by_batch, group, keeper):
                return  # a batch must stop now
            work, wait = self._due_retries(group)
            if work:
                log.info("retrying failed lines", extra={"lines": sum(len(c.only) for c in work), "wait": wait})
                if self._stop is not None and self._stop.wait(wait):
                    return
                if self._stop is None:
                    self._sleep(wait)

    def _passes(self, work: Sequence[WorkChunk], by_batch: dict[str, Claimed], group, keeper) -> bool:
        """One engine pass per task type; True if a batch must stop (cancel, expiry, lease, shutdown)."""
        by_task: dict[str, list[WorkChunk]] = {}
        for chunk in work:
            by_task.setdefault(TASK_OF_ENDPOINT[chunk.endpoint], []).append(chunk)
        last_progress = started = time.monotonic()
        first = True
        for chunks in by_task.values():
            if self.stamp_priorities:
                chunks = self.fair.stamp(chunks, self._demands(by_batch))
            stamped = {(c.batch_id, c.chunk): c for c in chunks}
            answered: dict[tuple[str, int], int] = {}
            results = self.engine.run(chunks)
            try:
                for result in results:
                    if first:
                        self.metrics.pipeline_start.observe(time.monotonic() - started)
                        first = False
                    where = (result.batch_id, result.chunk)
                    answered[where] = answered.get(where, 0) + 1
                    self.fair.served(stamped[where], answered[where])
                    claimed = by_batch[result.batch_id]
                    self._collect(claimed, result)
                    # A batch whose last line just came back is closed now, not at the next progress tick
                    # (rows of its group's bigger batches may come seconds apart).
                    finished = not claimed.remaining and not claimed.settled
                    if finished or time.monotonic() - last_progress >= self.progress_seconds:
                        last_progress = time.monotonic()
                        if self._publish_progress(group, keeper):
                            return True
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
                self.metrics.pass_duration.observe(time.monotonic() - started)
        return self._publish_progress(group, keeper)

    @staticmethod
    def _demands(by_batch: dict[str, Claimed]) -> dict[str, Demand]:
        return {
            batch_id: Demand(c.record.tenant, c.tier, c.entry.deadline, c.lines_left)
            for batch_id, c in by_batch.items()
        }

    def _due_retries(self, group: Sequence[Claimed]) -> tuple[list[WorkChunk], float]:
        """Every claimed batch's retry work, and the longest back-off any of it needs."""
        work: list[WorkChunk] = []
        wait = 0.0
        for claimed in group:
            chunks, delay = claimed.due_retries()
            work += chunks
            wait = max(wait, delay)
        return work, wait

    def _collect(self, claimed: Claimed, result: LineResult) -> None:
        taken = claimed.take(result)
        if taken == Taken.RETRY:
            self.metrics.line_retries.inc()
        if taken != Taken.KEPT:
            return
        self._observe(claimed.record, result)
        lines = claimed.complete_chunk(result.chunk)
        if lines is not None:
            write_chunk_result(
                self.ctx, claimed.record.id, result.chunk, lines, total=len(lines), copies=claimed.copies
            )

    def _observe(self, record: BatchRecord, result: LineResult) -> None:
        record_line(self.metrics, record, result)

    def _observe_forever(self, stop: threading.Event) -> None:
        while True:
            try:
                self.observe_queue()
            except DropbatchError as exc:
                log.warning("could not refresh queue metrics", extra={"error": str(exc)})
            if stop.wait(QUEUE_METRICS_EVERY_SECONDS):
                return

    def observe_queue(self) -> None:
        """Refresh the queue, SLA and engine-memory gauges, and scale the engine to the queue."""
        queued = observe_queue(self.ctx, self.metrics, self.owner)
        scale = getattr(self.engine, "scale", None)  # engines with replicas to grow (the warm engine)
        if scale is not None:
            scale(queued)

    def _publish_progress(self, group: Sequence[Claimed], keeper: LeaseKeeper) -> bool:
        """Move request_counts on the records, close finished batches; True if the engine pass must end now.

        That is when a batch is cancelled or expired, a lease was lost, or the runner
        is asked to stop (unfinished chunks are then handed back, not lost).
        """
        must_stop = self._stop is not None and self._stop.is_set()
        for claimed in group:
            if claimed.settled:
                continue
            if claimed.active and not claimed.remaining and claimed.lease.batch_id not in keeper.lost:
                # Done while bigger batches of its group still run: close it now, not when they end.
                keeper.drop(claimed.lease.batch_id)
                self._settle(claimed)
                claimed.settled = True
                continue
            if claimed.lease.batch_id in keeper.lost:
                claimed.lost = True
                must_stop = True
                continue
            if claimed.stop_as is not None:
                continue
            counts = claimed.counts()

            def move(batch: BatchRecord, counts: RequestCounts = counts) -> None:
                if batch.status == BatchStatus.IN_PROGRESS:
                    batch.request_counts = counts

            try:
                record = self.ctx.batches.update(claimed.record.tenant, claimed.record.id, move)
            except DropbatchError as exc:
                log.warning("progress update failed", extra={"batch_id": claimed.record.id, "error": str(exc)})
                continue
            if record.status == BatchStatus.CANCELLING:
                claimed.stop_as = BatchStatus.CANCELLED
            elif record.expires_at is not None and self.ctx.now() >= record.expires_at and claimed.remaining:
                claimed.stop_as = BatchStatus.EXPIRED
            must_stop = must_stop or claimed.stop_as is not None
        return must_stop

    def _settle(self, claimed: Claimed) -> None:
        """After the engine pass: finish the batch, or hand it back for another pass."""
        ctx = self.ctx
        if claimed.lost:
            log.warning("lease lost; another runner finishes this batch", extra={"batch_id": claimed.record.id})
            return
        if claimed.stop_as is not None:
            # Keep the lines that did finish: checkpoint partial chunks, then close early.
            for index, lines in claimed.buffers.items():
                write_chunk_result(ctx, claimed.record.id, index, list(lines.values()),
                                   total=claimed.remaining[index].lines, copies=claimed.copies)
            record = ctx.batches.get(claimed.record.tenant, claimed.record.id)
            closed = finalize(ctx, record, final=claimed.stop_as)
            self.metrics.batches_finished.labels(closed.status.value).inc()
            self._done(claimed.entry, claimed.lease)
            return
        if claimed.remaining:
            ctx.queue.release(claimed.lease)  # the pass ended early; the next pass continues it
            return
        record = ctx.batches.get(claimed.record.tenant, claimed.record.id)
        closed = finalize(ctx, record)
        self.metrics.batches_finished.labels(closed.status.value).inc()
        self._done(claimed.entry, claimed.lease)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``: claim queued work every poll and run each group in its own thread.

        The engine stays warm across groups and mixes their requests, so a batch that
        arrives while others run starts at once instead of waiting for them to end
        (up to ``max_running_groups`` groups at a time; the last free slot only takes
        batches of at most ``small_batch_lines``, so big batches never fill every slot).
        """
        log.info("runner started", extra={"owner": self.owner})
        self._stop = stop
        self.metrics.engine_up.set(1)
        # Queue and SLA gauges must move while groups run.
        observer = threading.Thread(target=self._observe_forever, args=(stop,), name="queue-metrics", daemon=True)
        observer.start()
        running: list[threading.Thread] = []
        limit = self.ctx.settings.service.max_running_groups
        while not stop.is_set():
            running = [t for t in running if t.is_alive()]
            group = []
            if len(running) < limit:
                small_only = limit > 1 and len(running) == limit - 1
                try:
                    group = self.claim_group(self.ctx.settings.limits.small_batch_lines if small_only else None)
                except DropbatchError as exc:
                    log.error("claiming failed; will retry", extra={"error": str(exc)})
            if group:
                worker = threading.Thread(target=self._run_group_logged, args=(group,), name="group", daemon=True)
                worker.start()
                running.append(worker)
            else:
                stop.wait(self.ctx.settings.service.poll_seconds)
        for worker in running:  # each group sees the stop, checkpoints and hands its leases back
            worker.join(timeout=self.ctx.settings.service.stop_seconds)
        self.metrics.engine_up.set(0)

    def _run_group_logged(self, group: Sequence[Claimed]) -> None:
        try:
            self.run_group(group)
        except EngineError as exc:
            self.metrics.engine_restarts.inc()
            log.error("engine pass failed; unfinished chunks will be retried", extra={"error": str(exc)})
        except DropbatchError as exc:
            log.error("runner pass failed; will retry", extra={"error": str(exc)})

