"""How many warm replicas a model's engine keeps: scaled by the work queued for it.

One more replica per ``lines_per_replica`` queued lines, between ``least`` and
``most``. Growing is immediate (a replica takes tens of seconds to load, so the
sooner the better); shrinking waits until the queue has needed fewer replicas for
``down_after`` seconds, so a gap between two uploads does not unload weights that
the next upload needs again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class ReplicaPlan:
    def __init__(
        self,
        least: int,
        most: int,
        lines_per_replica: int,
        down_after: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.least = least
        self.most = most
        self.lines_per_replica = lines_per_replica
        self.down_after = down_after
        self._clock = clock
        self._low_since: float | None = None

    def want(self, queued_lines: int, running: int) -> int:
        """Replicas to have now, given the lines queued for this model and the replicas running."""
        target = min(self.most, max(self.least, math.ceil(queued_lines / self.lines_per_replica)))
        if target >= running:
            self._low_since = None
            return target
        now = self._clock()
        if self._low_since is None:
            self._low_since = now
        return target if now - self._low_since >= self.down_after else running
