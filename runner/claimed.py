"""One claimed batch's bookkeeping while it runs: what is left, what is buffered, what to retry.

Pure state, no I/O: the runner feeds it results and writes what it says is complete.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from enum import Enum

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.jsonl import is_success
from dropbatch.models import BatchRecord, BatchStatus, RequestCounts, RetryConfig
from dropbatch.queue import Lease, QueueEntry


class Taken(Enum):
    """What ``Claimed.take`` did with a result."""

    IGNORED = "ignored"  # the batch stopped, the chunk is done, or the line was answered already
    RETRY = "retry"  # a server-side failure with retries left: asked again in a later pass
    KEPT = "kept"  # buffered as the line's final answer


@dataclass
class Claimed:
    """A batch this runner holds the lease on, and what is left of it."""

    entry: QueueEntry
    lease: Lease
    record: BatchRecord
    remaining: dict[int, WorkChunk]
    committed: RequestCounts
    buffers: dict[int, dict[str, dict]] = field(default_factory=dict)  # chunk → custom_id → line
    inflight: RequestCounts = field(default_factory=RequestCounts)
    stop_as: BatchStatus | None = None  # set when the batch must end early (cancel, expiry)
    lost: bool = False
    policy: RetryConfig = field(default_factory=RetryConfig)
    attempts: dict[str, int] = field(default_factory=dict)  # custom_id → retries so far
    pending_retry: dict[int, set[str]] = field(default_factory=dict)  # chunk → custom_ids to retry
    copies: Counter[str] = field(default_factory=Counter)  # original custom_id → lines copying its answer
    settled: bool = False  # finished and closed while the rest of its group still runs
    tier: str = ""  # the tenant's tier when claimed: its share of the engine (runner/schedule.py)

    def weight(self, custom_id: str) -> int:
        """Lines one engine answer settles: the line and its copies."""
        return 1 + self.copies[custom_id]

    @property
    def lines_left(self) -> int:
        """Engine work left (copies of duplicate lines are not engine work)."""
        return sum(c.answers for c in self.remaining.values())

    @property
    def active(self) -> bool:
        return not self.lost and self.stop_as is None

    def take(self, result: LineResult) -> Taken:
        """Record one engine result (exactly once per custom_id; a retryable failure may come back)."""
        chunk = self.remaining.get(result.chunk)
        if not self.active or chunk is None:
            return Taken.IGNORED
        buffer = self.buffers.setdefault(result.chunk, {})
        if result.custom_id in buffer:
            return Taken.IGNORED  # Ray retried work after an engine died: keep the first answer
        if not result.ok and is_retryable(result.line):
            attempts = self.attempts.get(result.custom_id, 0)
            if attempts < self.policy.max_retries:
                self.attempts[result.custom_id] = attempts + 1
                self.pending_retry.setdefault(result.chunk, set()).add(result.custom_id)
                return Taken.RETRY
        buffer[result.custom_id] = result.line
        if result.ok:
            self.inflight.completed += self.weight(result.custom_id)
        else:
            self.inflight.failed += self.weight(result.custom_id)
        return Taken.KEPT

    def complete_chunk(self, index: int) -> list[dict] | None:
        """The chunk's lines once every one is answered (then counted as committed), else None."""
        chunk, buffer = self.remaining.get(index), self.buffers.get(index, {})
        if chunk is None or len(buffer) < chunk.answers:
            return None
        lines = list(buffer.values())
        ok, failed = settled_counts(lines, self.copies)
        self.committed.completed += ok
        self.committed.failed += failed
        self.inflight.completed -= ok
        self.inflight.failed -= failed
        del self.buffers[index]
        del self.remaining[index]
        return lines

    def due_retries(self) -> tuple[list[WorkChunk], float]:
        """Chunks narrowed to the lines awaiting a retry, and how long to back off first."""
        work: list[WorkChunk] = []
        wait = 0.0
        if self.active:
            for index, custom_ids in self.pending_retry.items():
                if custom_ids:
                    work.append(replace(self.remaining[index], only=tuple(sorted(custom_ids))))
                    wait = max(wait, self.policy.delay(max(self.attempts[c] for c in custom_ids)))
        self.pending_retry.clear()
        return work, wait

    def counts(self) -> RequestCounts:
        """request_counts as the batch record should show them now."""
        return RequestCounts(
            total=self.committed.total,
            completed=self.committed.completed + self.inflight.completed,
            failed=self.committed.failed + self.inflight.failed,
        )


def is_retryable(line: dict) -> bool:
    """A server-side engine failure (5xx): worth another attempt. Client errors (4xx) are final."""
    response = line.get("response")
    return response is not None and response["status_code"] >= 500


def settled_counts(lines: list[dict], copies: Counter[str]) -> tuple[int, int]:
    """(completed, failed) request lines these result lines settle, copies of duplicates included."""
    ok = failed = 0
    for line in lines:
        n = 1 + copies[line["custom_id"]]
        if is_success(line):
            ok += n
        else:
            failed += n
    return ok, failed
