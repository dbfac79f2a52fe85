"""The runner: claim queued batches into groups, stream each group through the warm engine, finish them.

The flow, one module per step: ``claiming`` takes a leased batch into a group (or
settles it without the engine), ``group`` runs the group's engine passes and
retries, ``settle`` moves counts onto the records while it runs and closes each
batch, ``claimed`` is one batch's bookkeeping. Progress is checkpointed per chunk
as results stream back; a runner that dies loses only its unfinished chunks, which
the next lease holder reruns.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence

from dropbatch.context import Context
from dropbatch.engine.base import Engine
from dropbatch.errors import DropbatchError, EngineError
from dropbatch.observability.metrics import Metrics
from dropbatch.queue import runner_identity
from runner import settle
from runner.claimed import Claimed
from runner.claiming import take
from runner.group import GroupRun
from runner.leases import LeaseKeeper
from runner.observe import observe_queue
from runner.schedule import FairShare

log = logging.getLogger("dropbatch.runner")

PROGRESS_EVERY_SECONDS = 1.0
QUEUE_METRICS_EVERY_SECONDS = 5.0


class Runner:
    """One runner process's service loop over the work queue, feeding its warm engine."""

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
        self.stop_event: threading.Event | None = None  # set by run(); a stop ends every group's pass
        self.sleep = sleep  # backoff between retry passes when no stop event is given (tests inject it)
        # How often a pass looks at its records (counts out, cancel/expiry/lease in). Ray hands rows
        # over in blocks, so 0 (look after every result) makes a stop land right after a given line.
        self.progress_seconds = progress_seconds
        self._active: set[str] = set()  # batch ids a group of this runner is running now
        self._work: dict[str, tuple[str, str]] = {}  # their (tenant, content address), by batch id
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
        with self._active_lock:
            running = frozenset(self._active)
        for entry in ctx.queue.entries(skip=running):  # our own running batches: one LIST, no GET each poll
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
            if take(self.ctx, self.metrics, entry, lease, group, functools.partial(self._start_work, entry.batch_id)) is None:
                with self._active_lock:
                    self._active.discard(entry.batch_id)
                    self._work.pop(entry.batch_id, None)
        return group

    def _start_work(self, batch_id: str, work: tuple[str, str]) -> bool:
        """Note that ``batch_id`` runs ``work``; False if a batch of any group of ours runs it already."""
        with self._active_lock:
            if work in self._work.values():
                return False
            self._work[batch_id] = work
            return True

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
                GroupRun(self, group, keeper).execute()
            finally:
                keeper.stop()
            for claimed in group:
                if not claimed.settled:
                    settle.settle(self.ctx, self.metrics, claimed)
        finally:
            with self._active_lock:
                for claimed in group:
                    self._active.discard(claimed.record.id)
                    self._work.pop(claimed.record.id, None)

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
        problem = getattr(self.engine, "problem", None)  # the warm engine: up while no replica restarts
        if problem is not None and self.stop_event is not None and not self.stop_event.is_set():
            self.metrics.engine_up.set(0 if problem() else 1)
        scale = getattr(self.engine, "scale", None)  # engines with replicas to grow (the warm engine)
        if scale is not None:
            scale(queued)

    def publish_progress(self, group: Sequence[Claimed], keeper: LeaseKeeper) -> bool:
        """Counts onto the records; True if the group's engine pass must end now (runner/settle.py)."""
        stopping = self.stop_event is not None and self.stop_event.is_set()
        return settle.publish_progress(self.ctx, self.metrics, group, keeper, stopping=stopping)

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop``: claim queued work every poll and run each group in its own thread.

        The engine stays warm across groups and mixes their requests, so a batch that
        arrives while others run starts at once instead of waiting for them to end
        (up to ``max_running_groups`` groups at a time; the last free slot only takes
        batches of at most ``small_batch_lines``, so big batches never fill every slot).
        """
        log.info("runner started", extra={"owner": self.owner})
        self.stop_event = stop
        self.metrics.engine_up.set(1)
        # Queue and SLA gauges must move while groups run.
        observer = threading.Thread(target=self._observe_forever, args=(stop,), name="queue-metrics", daemon=True)
        observer.start()
        # Woken by a group that ends (its slot is free: claim now, not at the next poll) or by the stop.
        wake = threading.Event()
        threading.Thread(target=lambda: (stop.wait(), wake.set()), name="stop-wakes", daemon=True).start()
        running: list[tuple[threading.Thread, threading.Event]] = []  # each group's thread, set once it is over
        limit = self.ctx.settings.service.max_running_groups
        while not stop.is_set():
            wake.clear()
            running = [(thread, over) for thread, over in running if not over.is_set()]
            group = []
            if len(running) < limit:
                small_only = limit > 1 and len(running) == limit - 1
                try:
                    group = self.claim_group(self.ctx.settings.limits.small_batch_lines if small_only else None)
                except DropbatchError as exc:
                    log.error("claiming failed; will retry", extra={"error": str(exc)})
            if group:
                over = threading.Event()
                worker = threading.Thread(target=self._run_group_logged, args=(group, over, wake), name="group",
                                          daemon=True)
                worker.start()
                running.append((worker, over))
            else:
                wake.wait(self.ctx.settings.service.runner_poll_seconds)
        for worker, _ in running:  # each group sees the stop, checkpoints and hands its leases back
            worker.join(timeout=self.ctx.settings.service.stop_seconds)
        self.metrics.engine_up.set(0)

    def _run_group_logged(self, group: Sequence[Claimed], over: threading.Event, wake: threading.Event) -> None:
        try:
            self.run_group(group)
        except EngineError as exc:
            self.metrics.engine_restarts.inc()
            log.error("engine pass failed; unfinished chunks will be retried", extra={"error": str(exc)})
        except DropbatchError as exc:
            log.error("runner pass failed; will retry", extra={"error": str(exc)})
        finally:
            over.set()
            wake.set()

