"""Keeping a runner's leases alive while its engine pass runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dropbatch.context import Context
from dropbatch.errors import DropbatchError, LeaseLost
from dropbatch.queue import Lease

log = logging.getLogger("dropbatch.runner")


class LeaseKeeper:
    """Renews the group's leases in the background while the engine runs."""

    def __init__(self, ctx: Context, leases: Sequence[Lease]) -> None:
        self.ctx = ctx
        self.leases = list(leases)
        self.lost: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def drop(self, batch_id: str) -> None:
        """Stop renewing ``batch_id``'s lease (its batch is finished; the lease is about to be released)."""
        self.leases = [lease for lease in self.leases if lease.batch_id != batch_id]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        seconds = self.ctx.settings.service.lease_seconds
        while not self._stop.wait(max(0.5, seconds / 3)):
            for lease in list(self.leases):
                if lease.batch_id in self.lost:
                    continue
                try:
                    self.ctx.queue.renew(lease, seconds)
                except LeaseLost:
                    self.lost.add(lease.batch_id)
                except DropbatchError as exc:
                    log.warning("lease renewal failed; retrying", extra={"batch_id": lease.batch_id, "error": str(exc)})
