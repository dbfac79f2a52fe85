"""What the warm engine works on next: a vLLM priority for every request line.

vLLM runs with ``--scheduling-policy priority`` and serves the lowest number first,
so ordering the work is stamping numbers; no feeder has to hold requests back:

* a batch whose deadline is at risk (its lines left, at the throughput measured
  here, would finish within ``deadline_margin_seconds`` of its deadline) gets
  ``URGENT + deadline``: before everything else, earliest deadline first;
* otherwise tenants share the engine by tier weight (stride scheduling): each line
  advances its tenant's virtual time by ``STRIDE / weight`` and carries the
  virtual time it starts at. A tenant that becomes active starts at the global
  virtual time, the point the engine has served up to, so idle time earns no
  credit and a newcomer's lines interleave with what is already queued instead
  of waiting behind it.

Pure bookkeeping on an injected clock (no I/O); the runner stamps each pass's
chunks (``stamp``) and reports what came back (``served``).

vLLM's priority orders only the requests inside it. Every group of the runner
streams its own chunks into the engine actor, and the actor's Python front end
(chat template, tokenizing, detokenizing; the bottleneck for a small model) works
first come first served, so a small batch's requests queued behind thousands of a
big batch's waited as long as those did, whatever their priority. ``EngineGate``,
in the engine actor, lets requests into vLLM lowest priority number first with a
bounded number inside (``engine_gate_limit``), so the stamps order the front end too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from dropbatch.engine.base import WorkChunk

STRIDE = 1_000_000  # virtual time of one line at weight 1: integer steps stay exact for weights up to 10^6
URGENT = -(2**62)  # plus the deadline (epoch seconds): below every fair-share priority, still an int64
THROUGHPUT_WINDOW_SECONDS = 60.0


def engine_gate_limit(max_num_seqs: int) -> int:
    """Requests the gate lets inside vLLM: a full running batch and a quarter more waiting.

    The quarter keeps a freed running slot from waiting for the front end. Not more: vLLM
    schedules its own waiting requests before anything the gate lets in later, so each
    one there is a request an urgent newcomer waits behind (a lockstep batch: a whole wave).
    """
    return max_num_seqs + max(1, max_num_seqs // 4)


@dataclass(frozen=True)
class Demand:
    """One claimed batch's part of a pass: whose it is, how heavy, and when it is due."""

    tenant: str
    tier: str
    deadline: int
    lines_left: int


def line_priority(chunk: WorkChunk, index: int, now: float) -> int | None:
    """The priority of the ``index``-th line the pass sends from ``chunk``; None when it is not stamped."""
    if chunk.priority_step <= 0:
        return None
    if now >= chunk.urgent_at:
        return chunk.urgent_priority
    return chunk.priority + index * chunk.priority_step


class FairShare:
    """Virtual times per tenant, the global virtual time, and the measured line throughput."""

    def __init__(self, weights: dict[str, float], *, margin_seconds: float, clock: Callable[[], float]) -> None:
        self.weights = weights
        self.margin_seconds = margin_seconds
        self.clock = clock
        self.global_time = 0
        self.tenant_time: dict[str, int] = {}
        self._finished: deque[float] = deque()  # when each line of the throughput window finished
        self._started: float | None = None  # when the first pass was stamped: the engine is measured from then
        self._lock = threading.Lock()  # groups stamp and report from their own threads

    def step(self, tier: str) -> int:
        """Virtual time one line of ``tier`` costs (an unknown tier weighs 1)."""
        return max(1, round(STRIDE / self.weights.get(tier, 1.0)))

    def throughput(self) -> float | None:
        """Lines per second finished over the last window; None before anything finished."""
        with self._lock:
            return self._throughput(self.clock())

    def _throughput(self, now: float) -> float | None:
        while self._finished and self._finished[0] < now - THROUGHPUT_WINDOW_SECONDS:
            self._finished.popleft()
        if not self._finished:
            return None
        since = max(now - THROUGHPUT_WINDOW_SECONDS, self._started if self._started is not None else now)
        return len(self._finished) / max(now - since, 1.0)

    def _urgent_at(self, demand: Demand, rate: float | None) -> float:
        """When ``demand``'s batch becomes at risk: its deadline less the margin and its projected run time."""
        needed = demand.lines_left / rate if rate else 0.0
        return demand.deadline - self.margin_seconds - needed

    def stamp(self, chunks: Sequence[WorkChunk], demands: dict[str, Demand]) -> list[WorkChunk]:
        """``chunks`` with their priorities, in the order the engine should get them (most urgent first).

        ``demands`` maps each chunk's batch id to its batch; a chunk's lines take the next
        stretch of their tenant's virtual time, in the order given.
        """
        stamped: list[WorkChunk] = []
        with self._lock:
            if self._started is None:
                self._started = self.clock()
            rate = self._throughput(self.clock())
            for chunk in chunks:
                demand = demands[chunk.batch_id]
                step = self.step(demand.tier)
                start = max(self.tenant_time.get(demand.tenant, 0), self.global_time)
                lines = chunk.answers
                self.tenant_time[demand.tenant] = start + lines * step
                stamped.append(replace(chunk, priority=start, priority_step=step, urgent_at=self._urgent_at(demand, rate),
                                       urgent_priority=URGENT + demand.deadline))
        now = self.clock()
        return sorted(stamped, key=lambda c: line_priority(c, 0, now) or 0)

    def served(self, chunk: WorkChunk, done: int) -> None:
        """``chunk`` has had ``done`` lines answered: the engine has served up to there; one more line finished."""
        with self._lock:
            self._finished.append(self.clock())
            if chunk.priority_step > 0:
                self.global_time = max(self.global_time, chunk.priority + max(done - 1, 0) * chunk.priority_step)


class EngineGate:
    """Lets requests into the engine lowest priority number first, at most ``limit`` inside at once.

    Ties (and fcfs, where every priority is 0) go in arrival order. One per engine
    actor, used from its event loop only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.inside = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @asynccontextmanager
    async def admitted(self, priority: int) -> AsyncIterator[None]:
        await self._enter(priority)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, priority: int) -> None:
        if self.inside < self.limit and not self._waiting:
            self.inside += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrival), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # our turn came as we were cancelled: pass it on
            raise

    def _leave(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter (its request timed out) gives no turn back
                turn.set_result(None)
                return
        self.inside -= 1
