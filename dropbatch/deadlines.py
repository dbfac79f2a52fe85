"""Completion windows, the deadline they set, and whether a new batch can make it.

A batch asks for ``24h`` (OpenAI's window) or ``1h`` (the priority window, for the
tiers in ``DROPBATCH_PRIORITY_WINDOW_TIERS``); its deadline is ``created_at`` plus
the window's seconds and orders the queue (earliest deadline first).

SLA-aware admission: each runner publishes the request lines per second it
measured recently (``throughput/<runner>.json`` in the control bucket). The watcher
adds up the fresh samples and projects a new batch's finish as now plus the lines
queued with an earlier or equal deadline plus its own, at that rate. Without a
fresh sample (no runner, or idle for a while) there is nothing to project from and
the batch is admitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from dropbatch.errors import InvalidRequest
from dropbatch.queue import QueueEntry
from dropbatch.records import Records
from dropbatch.settings import LimitSettings
from dropbatch.storage.keys import ControlKeys

CompletionWindow = Literal["24h", "1h"]
DEFAULT_WINDOW = "24h"


def window_seconds(limits: LimitSettings, window: str) -> int:
    """Seconds of ``window`` (a name the schemas already accepted)."""
    return limits.completion_windows[window]


def check_window(limits: LimitSettings, window: str, tier: str) -> None:
    """400 naming completion_window when ``tier`` may not use ``window``."""
    if window == DEFAULT_WINDOW or tier in limits.priority_window_tiers:
        return
    allowed = ", ".join(limits.priority_window_tiers) or "no tier"
    raise InvalidRequest(
        f"completion_window {window!r} is available to the {allowed} tier(s); this tenant's tier is {tier!r}. "
        f"Use completion_window '{DEFAULT_WINDOW}'.",
        code="completion_window_not_allowed",
        param="completion_window",
    )


class Throughput(BaseModel):
    """What one runner measured: request lines finished per second, and when."""

    owner: str
    lines_per_second: float
    measured_at: float


def publish_throughput(records: Records, owner: str, lines_per_second: float, now: float) -> None:
    """Record this runner's recent rate; an idle runner (rate 0) leaves its last sample to age out."""
    if lines_per_second > 0:
        records.put(ControlKeys.throughput(owner), Throughput(owner=owner, lines_per_second=lines_per_second, measured_at=now))


def measured_throughput(records: Records, now: float, max_age: float) -> float | None:
    """Request lines per second of every runner with a fresh sample; None when there is none."""
    total = 0.0
    fresh = False
    for key in records.list_keys(ControlKeys.THROUGHPUT_PREFIX):
        sample = records.get(key, Throughput)
        if sample is None:
            continue
        if now - sample.measured_at > max_age:
            records.store.delete(records.bucket, key)  # a runner that stopped or idles: its rate is gone
            continue
        total += sample.lines_per_second
        fresh = True
    return total if fresh else None


def projected_finish(now: float, rate: float, queued: Iterable[QueueEntry], *, deadline: int, lines: int) -> float:
    """When a batch of ``lines`` due at ``deadline`` would finish, worked earliest deadline first at ``rate``."""
    ahead = sum(entry.lines for entry in queued if entry.deadline <= deadline)
    return now + (ahead + lines) / rate
