"""``in_order``: a request's independent steps awaited together, failing as the sequential code failed."""

from __future__ import annotations

import asyncio

import pytest

from dropbatch.errors import InvalidRequest, NotFound
from gateway.together import in_order


async def _step(
    name: str,
    log: list[str],
    *,
    after: asyncio.Event | None = None,
    ended: asyncio.Event | None = None,
    error: Exception | None = None,
    hold: bool = False,
) -> str:
    """Waits for ``after`` (if any), records how it ended in ``log`` and sets ``ended``, then answers or raises."""
    try:
        if after is not None:
            await after.wait()
        if hold:
            await asyncio.Event().wait()  # never set: only a cancellation ends it
    except asyncio.CancelledError:
        log.append(f"{name} cancelled")
        raise
    log.append(f"{name} done")
    if ended is not None:
        ended.set()
    if error is not None:
        raise error
    return name


def test_results_come_back_in_the_order_given() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        c_ended = asyncio.Event()
        answers = await in_order(_step("a", log, after=c_ended), _step("b", log), _step("c", log, ended=c_ended))
        assert log == ["b done", "c done", "a done"]  # they ran together: the first finished last
        return answers

    assert asyncio.run(main()) == ["a", "b", "c"]


def test_the_earliest_failing_step_answers_even_when_a_later_one_fails_first() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        model_failed = asyncio.Event()
        with pytest.raises(InvalidRequest) as raised:
            await in_order(
                _step("window", log, after=model_failed, error=InvalidRequest("bad window")),
                _step("model", log, ended=model_failed, error=NotFound("no such model")),
                _step("key", log, hold=True),
            )
        assert raised.value.message == "bad window"  # one error, never an ExceptionGroup
        return log

    log = asyncio.run(main())
    # The later failure cancelled only what came after it; the earlier step ran to its own error.
    assert sorted(log) == ["key cancelled", "model done", "window done"]


def test_a_failure_cancels_the_steps_after_it_and_leaves_nothing_running() -> None:
    async def main() -> tuple[list[str], set[asyncio.Task]]:
        log: list[str] = []
        with pytest.raises(NotFound):
            await in_order(_step("file", log, error=NotFound("no such file")), _step("key", log, hold=True))
        return log, asyncio.all_tasks() - {asyncio.current_task()}

    log, running = asyncio.run(main())
    assert log == ["file done", "key cancelled"] and running == set()


def test_cancelling_the_caller_cancels_every_step() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        call = asyncio.ensure_future(in_order(_step("a", log, hold=True), _step("b", log, hold=True)))
        for _ in range(3):  # the call starts its steps, and they start waiting
            await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return sorted(log)

    assert asyncio.run(main()) == ["a cancelled", "b cancelled"]
