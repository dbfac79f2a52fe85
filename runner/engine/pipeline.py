"""One engine run as a Ray Data pipeline, and the probe run that warms its stages.

    from_items(chunks) → flat_map(ChunkReader) → map_batches(EngineAsker) → driver

The stages themselves live in ``stream.py``; this module decides how many of them
run at once and turns the rows that come back into ``LineResult``s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.errors import EngineError
from dropbatch.settings import Settings, StorageSettings
from runner.engine.lines import line_result
from runner.engine.stream import ChunkReader, EngineAsker, worker_store

log = logging.getLogger("dropbatch.engine")

STAGE_CPUS = 0.25  # Ray Data's read and ask stages: fractions, so 2 cores never deadlock
STREAMS_PER_ENGINE = 4


def stage_workers(replicas: int) -> int:
    """Ray worker processes a runner keeps warm for its stages: a big group's streams, and as many again.

    Ray keeps only ``num_workers_soft_limit`` worker processes (the CPU count by default) and kills
    idle ones above it, so with a big group's streams on every warm worker, the group a small
    batch gets while it runs had to start a worker process: ~4 s of its latency on a busy 2-core
    machine (measured with bench/fairness.py). Twice the streams keeps a warm worker for it.
    """
    return 2 * STREAMS_PER_ENGINE * replicas


def configure_ray_data(stall_seconds: float) -> None:
    """Ray Data settings for every run of this process: quiet, and never waiting forever for a slot."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A run whose stage actors cannot be placed (every CPU taken) fails after the stall window
    # and its chunks are retried, loudly, instead of waiting for resources forever (Ray's default).
    context.wait_for_min_actors_s = int(stall_seconds)


def warm_stages(settings: Settings, probes: Sequence[tuple[str, str, str]], patience: float) -> None:
    """Send probe rows (``(engine, url, body_json)``, one per engine) through both Ray Data stages, shaped
    as a run is (the two stages fused, as many tasks at once), so no batch waits for Ray to start the
    stage workers and for them to import Ray Data and build their S3 client (~20 s on a busy 2-core
    machine): ``stage_workers`` of them per engine."""
    import ray

    rows = [
        {"batch_id": "warm", "chunk": i, "custom_id": f"warm-{i}", "url": url, "engine": name, "body_json": body,
         "status": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for i, (name, url, body) in enumerate(list(probes) * stage_workers(1))
    ]
    started = time.monotonic()
    # Every warm-up task waits for all the others, so each gets a worker process of its own: left
    # alone, one worker answered all of them in turn on an idle machine and nothing else was warm.
    barrier = ray.remote(num_cpus=0)(Barrier).remote(len(rows))
    try:
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        pool = ray.data.TaskPoolStrategy(size=len(rows))
        ds = ds.flat_map(StoreWarmer(settings.storage, barrier), num_cpus=STAGE_CPUS, compute=pool)
        ds = ds.map_batches(EngineAsker(patience), num_cpus=STAGE_CPUS, compute=pool)
        answered = sum(1 for row in ds.iter_rows() if int(row["status"]) == 200)
        together = ray.get(barrier.peak.remote())
    finally:
        ray.kill(barrier)
    log.info("engine stages warm", extra={"rows": len(rows), "answered": answered, "workers": together,
                                          "seconds": round(time.monotonic() - started, 2)})


def stream_chunks(settings: Settings, chunks: Sequence[WorkChunk],
                  engines: dict[tuple[str, str], list[str]]) -> Iterator[LineResult]:
    """Every line of ``chunks`` through the engine actors named in ``engines`` ((model, task) → names)."""
    import ray

    by_chunk = {(c.batch_id, c.chunk): c for c in chunks}
    ds = ray.data.from_items([asdict(c) for c in chunks], override_num_blocks=len(chunks))
    # A few chunks per engine in flight keep vLLM's batches full; more only costs worker memory,
    # and task slots that another group's run (a small batch behind a big one) needs at once.
    streams = min(STREAMS_PER_ENGINE * max(len(names) for names in engines.values()), len(chunks))
    pool = ray.data.TaskPoolStrategy(size=streams)  # tasks (callable instances, not classes), at most this many
    ds = ds.flat_map(ChunkReader(settings, engines), num_cpus=STAGE_CPUS, compute=pool)
    ds = ds.map_batches(EngineAsker(settings.engine.stall_seconds), batch_size=settings.engine.batch_size,
                        num_cpus=STAGE_CPUS, compute=pool)
    expected = sum(c.answers for c in chunks)
    produced = 0
    try:
        # Each answered block as soon as it is out, with no look-ahead: iter_rows() prefetches one block,
        # so every block waited for the next one to be answered too (a small batch's rows, answered in
        # 0.4 s, waited 3 s for the 500-line chunk its worker took next; bench/fairness.py, instrumented).
        for block in ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="pyarrow"):
            for row in block.to_pylist():
                produced += 1
                yield line_result(by_chunk[(row["batch_id"], int(row["chunk"]))], row)
    except ray.exceptions.RayError as exc:
        raise EngineError(f"the engine pipeline failed: {exc}") from exc
    if produced < expected:
        raise EngineError(f"the engine returned {produced} of {expected} lines")


class StoreWarmer:
    """The read stage's warm-up: build the worker's S3 store (``worker_store``) as ``ChunkReader`` will,
    then wait at ``barrier`` until every warm-up task holds a worker."""

    def __init__(self, storage: StorageSettings, barrier: Any) -> None:
        self.storage = storage
        self.barrier = barrier

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        import ray

        worker_store(self.storage)
        ray.get(self.barrier.wait.remote(BARRIER_SECONDS))
        return [row]


BARRIER_SECONDS = 20.0  # a worker Ray cannot start (no CPU left) delays start-up by this much, once


class Barrier:
    """Ray actor body: ``wait`` returns once ``parties`` callers are waiting (or after ``timeout``)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.waiting = 0
        self.most = 0
        self._full: Any = None

    async def wait(self, timeout: float) -> None:
        import asyncio

        if self._full is None:
            self._full = asyncio.Event()
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        if self.waiting >= self.parties:
            self._full.set()
        try:
            await asyncio.wait_for(self._full.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1

    def peak(self) -> int:
        """The most callers that were waiting at once: the warm-up tasks that held a worker together."""
        return self.most
