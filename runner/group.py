"""One claimed group's engine passes: results into each batch's bookkeeping, progress out, retries in."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.engine.requests import TASK_OF_ENDPOINT
from dropbatch.errors import EngineError
from dropbatch.models import BatchStatus
from runner.claimed import Claimed, Taken
from runner.claiming import INPUT_CHANGED, fail, inputs_unchanged
from runner.finalize import write_chunk_result
from runner.leases import LeaseKeeper
from runner.observe import record_line
from runner.schedule import Demand

if TYPE_CHECKING:
    from runner.service import Runner

log = logging.getLogger("dropbatch.runner")


class GroupRun:
    """Streams a group's remaining chunks through the runner's engine until done or told to stop."""

    def __init__(self, runner: Runner, group: Sequence[Claimed], keeper: LeaseKeeper) -> None:
        self.runner = runner
        self.group = group
        self.keeper = keeper
        self.by_batch = {c.record.id: c for c in group}

    def execute(self) -> None:
        """Engine passes over the group's remaining chunks, then retry passes for failed lines."""
        runner, group = self.runner, self.group
        work = self._unfinished()
        log.info("engine run", extra={"batches": len(group), "lines": sum(c.lines_left for c in group)})
        while work:
            try:
                if self._passes(work):
                    return  # a batch must stop now
            except EngineError:
                # A tenant may rewrite its own input while the pass reads it: that fails its batch, not the
                # group's other batches (other tenants'), which go on at once with what is left of them.
                if not self._fail_changed_inputs():
                    raise
                work = self._unfinished()
                continue
            work, wait = self._due_retries()
            if work:
                log.info("retrying failed lines", extra={"lines": sum(len(c.only) for c in work), "wait": wait})
                if runner.stop_event is not None and runner.stop_event.wait(wait):
                    return
                if runner.stop_event is None:
                    runner.sleep(wait)

    def _passes(self, work: Sequence[WorkChunk]) -> bool:
        """One engine pass per task type; True if a batch must stop (cancel, expiry, lease, shutdown)."""
        runner = self.runner
        by_task: dict[str, list[WorkChunk]] = {}
        for chunk in work:
            by_task.setdefault(TASK_OF_ENDPOINT[chunk.endpoint], []).append(chunk)
        last_progress = started = time.monotonic()
        first = True
        for chunks in by_task.values():
            if runner.stamp_priorities:
                chunks = runner.fair.stamp(chunks, self._demands())
            stamped = {(c.batch_id, c.chunk): c for c in chunks}
            answered: dict[tuple[str, int], int] = {}
            results = runner.engine.run(chunks)
            try:
                for result in results:
                    if first:
                        runner.metrics.pipeline_start.observe(time.monotonic() - started)
                        first = False
                    where = (result.batch_id, result.chunk)
                    answered[where] = answered.get(where, 0) + 1
                    runner.fair.served(stamped[where], answered[where])
                    claimed = self.by_batch[result.batch_id]
                    self._collect(claimed, result)
                    # A batch whose last line just came back is closed now, not at the next progress tick
                    # (rows of its group's bigger batches may come seconds apart).
                    finished = not claimed.remaining and not claimed.settled
                    if finished or time.monotonic() - last_progress >= runner.progress_seconds:
                        last_progress = time.monotonic()
                        if runner.publish_progress(self.group, self.keeper):
                            return True
            finally:
                close = getattr(results, "close", None)
                if close is not None:
                    close()
                runner.metrics.pass_duration.observe(time.monotonic() - started)
        return runner.publish_progress(self.group, self.keeper)

    def _unfinished(self) -> list[WorkChunk]:
        """The unanswered chunks of the group's batches still running (lines answered already are ignored)."""
        return [chunk for c in self.group if c.active and not c.settled for chunk in c.remaining.values()]

    def _fail_changed_inputs(self) -> bool:
        """Fail the group's batches whose inputs no longer hold the admitted bytes; True if there was one.

        Their hour's quota stays spent: lines of theirs may have run already.
        """
        runner = self.runner
        changed = [c for c in self.group if c.active and not c.settled and not inputs_unchanged(runner.ctx, c.record)]
        for claimed in changed:
            self.keeper.drop(claimed.lease.batch_id)
            fail(
                runner.ctx,
                runner.metrics,
                claimed.entry,
                claimed.lease,
                claimed.record,
                "input_changed",
                INPUT_CHANGED,
                release_quota=False,
            )
            claimed.stop_as = BatchStatus.FAILED
            claimed.settled = True
        return bool(changed)

    def _demands(self) -> dict[str, Demand]:
        return {
            batch_id: Demand(c.record.tenant, c.tier, c.entry.deadline, c.lines_left)
            for batch_id, c in self.by_batch.items()
        }

    def _due_retries(self) -> tuple[list[WorkChunk], float]:
        """Every claimed batch's retry work, and the longest back-off any of it needs."""
        work: list[WorkChunk] = []
        wait = 0.0
        for claimed in self.group:
            chunks, delay = claimed.due_retries()
            work += chunks
            wait = max(wait, delay)
        return work, wait

    def _collect(self, claimed: Claimed, result: LineResult) -> None:
        taken = claimed.take(result)
        if taken == Taken.RETRY:
            self.runner.metrics.line_retries.inc()
        if taken != Taken.KEPT:
            return
        record_line(self.runner.metrics, claimed.record, result, claimed.weight(result.custom_id))
        lines = claimed.complete_chunk(result.chunk)
        if lines is not None:
            write_chunk_result(
                self.runner.ctx, claimed.record.id, result.chunk, lines, total=len(lines), copies=claimed.copies
            )
