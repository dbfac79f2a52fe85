"""Independent steps of one request awaited together, failing exactly as if they ran one after another.

A request's checks and lookups (the input file, the tenant's tier, the signing
key ...) do not depend on each other, so awaiting them one by one costs one S3
round trip each. ``in_order`` awaits them at once and still answers what the
sequential code answered: the error of the earliest failing step in the order
given, never an ``ExceptionGroup``, whichever failed first in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def in_order(*steps: Awaitable[Any]) -> list[Any]:
    """Await ``steps`` concurrently; their results in order, or the earliest failing step's error.

    A failure cancels the steps after it (their outcome no longer matters); the ones
    before it run on, since one of them may fail too and would come first. Nothing is
    left running when this returns or raises. Steps with side effects belong before
    the checks that would have stopped them, or after ``in_order``.
    """
    tasks = [asyncio.ensure_future(step) for step in steps]

    def cancel_after(index: int) -> Callable[[asyncio.Future[Any]], None]:
        def done(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                for later in tasks[index + 1 :]:
                    later.cancel()

        return done

    for index, task in enumerate(tasks):
        task.add_done_callback(cancel_after(index))
    try:
        return [await task for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
