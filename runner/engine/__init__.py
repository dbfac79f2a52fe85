"""The runner's engine: warm vLLM actors fed by Ray Data.

``build_engine(settings)`` gives a ``WarmEngine``. Entering it starts Ray and one
long-lived ``EngineServer`` actor per replica for the first kind each served model
serves (``DROPBATCH_MODELS``; ``tasks.py``): generate for a generative model, whose
embeddings engine starts on its first embeddings batch and then stays up; embed for an
embedding model, which never loads a generate engine. Every ``run`` after that streams chunks
through the running engines, each chunk to the engines of the model its lines
name, so no batch, pass, retry or chunk ever starts vLLM. ``run`` may be called from several
threads at once: vLLM's continuous batching mixes their requests.

The generate engines of a model scale between ``DROPBATCH_ENGINE_REPLICAS`` and
``DROPBATCH_ENGINE_REPLICAS_MAX`` with the lines queued for it (``scale``, called by
the runner as it watches the queue): a new replica loads beside the running ones
and serves the runs that start after it is up; a replica the queue no longer needs
is stopped once no run is in flight.

A watchdog thread asks each actor for its progress every few seconds; an engine
whose engine process died, or that holds requests in flight without finishing
any for ``stall_seconds``, is killed and restarted by Ray (``max_restarts=-1``).
Its in-flight requests are sent again once it is back (``EngineAsker``); only an
engine that stays away longer than the stall window turns them into retryable 503s.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.errors import ConfigError, EngineError
from dropbatch.settings import Settings
from runner.engine.actors import launch_engines, stop_engines
from runner.engine.flags import worker_env
from runner.engine.limits import engine_limits, gpu_memory_bytes
from runner.engine.pipeline import configure_ray_data, stage_workers, stream_chunks, warm_stages
from runner.engine.reap import reap_engine_processes, remove_socket_dirs
from runner.engine.scaling import ReplicaPlan
from runner.engine.server import TASK_OF_URL, probe_request
from runner.engine.stream import engine_name
from runner.engine.tasks import served_by_model

log = logging.getLogger("dropbatch.engine")

__all__ = ["WarmEngine", "build_engine"]

WATCHDOG_SECONDS = 2.0


def build_engine(settings: Settings, *, on_restart: Callable[[str], None] | None = None) -> WarmEngine:
    return WarmEngine(settings, on_restart=on_restart)


class WarmEngine:
    """``Engine`` on warm vLLM actors. Ray starts in ``__enter__``, never in ``__init__``."""

    def __init__(self, settings: Settings, *, on_restart: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_restart = on_restart
        self._session = secrets.token_hex(8)
        self._started_ray = False
        self._device: str | None = None
        self._actors: dict[str, Any] = {}  # actor name → handle
        self._limits: dict[str, dict[str, int]] = {}  # model → planned vLLM limits
        self._replicas: dict[tuple[str, str], int] = {}  # (model, task) → replicas up
        self._tasks: dict[str, tuple[str, ...]] = {}  # model → engine kinds it serves, the first started with us
        self._plans: dict[str, ReplicaPlan] = {}  # model → how many replicas of its first kind it needs
        self._growing: set[str] = set()  # models whose extra replicas are loading
        self._runs = 0  # runs in flight (replicas are stopped only when none is)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.ready = False
        self._down: dict[str, str] = {}  # engine actor name → why it is not serving now (the watchdog's view)
        self._loading: dict[str, Any] = {}  # engine actor name → its probe in flight, while it loads again
        self.restarts = 0
        self.stall_seconds = settings.engine.stall_seconds  # tests shorten it on a running engine

    # -- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> WarmEngine:
        import ray

        engine = self.settings.engine
        env = worker_env(engine, self._session)
        os.environ.update(env)  # a local Ray cluster's workers inherit it
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "runtime_env": {"env_vars": env},
                "include_dashboard": False,
                "log_to_driver": False,
                "ignore_reinit_error": True,
            }
            if engine.ray_address:
                kwargs["address"] = engine.ray_address
            else:
                kwargs["num_cpus"] = engine.ray_num_cpus or max(4, os.cpu_count() or 2)
                # Keep the warmed stage workers (and the engine actors') processes alive while idle. An attached
                # cluster keeps its own limit (RAY_num_workers_soft_limit when its nodes start).
                workers = kwargs["num_cpus"] + stage_workers(engine.most_replicas) + engine.most_replicas
                kwargs["_system_config"] = {"num_workers_soft_limit": workers}
            ray.init(**kwargs)
            self._started_ray = True
        configure_ray_data(engine.stall_seconds)
        self._device = self._resolve_device(ray.cluster_resources())
        gpu_memory = gpu_memory_bytes() if self._device == "gpu" else None
        self._limits = {
            model: engine_limits(engine.for_model(model), device=self._device, gpu_memory_bytes=gpu_memory)
            for model in engine.served
        }
        self._tasks = served_by_model(engine)
        try:
            probes = [
                (name, *probe_request(tasks[0], model))
                for model, tasks in self._tasks.items()
                for name in self.engines(model, tasks[0])
            ]
            warm_stages(self.settings, probes, self.stall_seconds)
        except BaseException:
            self.__exit__()
            raise
        self.ready = True
        self._watchdog = threading.Thread(target=self._watch, name="engine-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self.ready = False
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        with self._lock:
            actors, self._actors = dict(self._actors), {}
        if ray.is_initialized():
            stop_engines(actors)
            if self._started_ray:
                ray.shutdown()
        self._started_ray = False
        reap_engine_processes(self._session, orphans_only=False)
        remove_socket_dirs(self._session)  # what killed actors left on this node

    def _resolve_device(self, resources: dict[str, float]) -> str:
        wanted = self.settings.engine.device
        has_gpu = resources.get("GPU", 0) > 0
        if wanted == "gpu" and not has_gpu:
            raise ConfigError("DROPBATCH_DEVICE=gpu but the Ray cluster has no GPU")
        return "gpu" if wanted == "gpu" or (wanted == "auto" and has_gpu) else "cpu"

    def engines(self, model: str, task: str) -> list[str]:
        """Names of the running engine actors for ``model``'s ``task``; starts them (and waits) on first use."""
        with self._lock:
            count = self._replicas.setdefault((model, task), self.settings.engine.replicas)
            names = [engine_name(model, task, i) for i in range(count)]
            missing = [name for name in names if name not in self._actors]
            if missing:
                self._actors.update(self._launch(model, task, missing))
            return names

    def _launch(self, model: str, task: str, names: Sequence[str]) -> dict[str, Any]:
        return launch_engines(self.settings.engine.for_model(model), task, names, device=self._device,
                              limits=self._limits.get(model), session=self._session)

    # -- scaling ----------------------------------------------------------------------

    def scale(self, queued_lines: Mapping[str, int]) -> None:
        """Grow or shrink the replicas of each model's first kind (``_tasks``) for the lines queued for it."""
        engine = self.settings.engine
        if not self.ready or engine.most_replicas == engine.replicas:
            return
        for model in engine.served:
            plan = self._plans.setdefault(
                model, ReplicaPlan(engine.replicas, engine.most_replicas, engine.scale_lines, engine.scale_down_seconds)
            )
            task = self._tasks[model][0]
            with self._lock:
                running = self._replicas.get((model, task), engine.replicas)
                if model in self._growing:
                    continue
                want = plan.want(queued_lines.get(model, 0), running)
                if want > running:
                    self._growing.add(model)
                    names = [engine_name(model, task, i) for i in range(running, want)]
                    threading.Thread(target=self._grow, args=(model, task, names, want), name="engine-scale-up",
                                     daemon=True).start()
                    continue
                if want == running or self._runs:
                    continue  # shrink only between runs: a running one may have rows for any replica
                self._replicas[(model, task)] = want
                names = [engine_name(model, task, i) for i in range(want, running)]
                retired = {name: self._actors.pop(name) for name in names if name in self._actors}
            log.info("engine scaled down", extra={"model": model, "replicas": want, "engines": names})
            stop_engines(retired)

    def _grow(self, model: str, task: str, names: list[str], want: int) -> None:
        try:
            actors = self._launch(model, task, names)
        except Exception as exc:  # noqa: BLE001 - the replicas already up keep serving
            with self._lock:
                self._growing.discard(model)
            log.error("engine scale-up failed", extra={"model": model, "engines": names, "error": str(exc)})
            return
        with self._lock:  # one step with the count: a scale() in between must not start these names again
            self._growing.discard(model)
            if self._stop.is_set():
                retired = actors
            else:
                self._actors.update(actors)
                self._replicas[(model, task)] = want
                retired = {}
        if retired:
            stop_engines(retired)
        else:
            log.info("engine scaled up", extra={"model": model, "replicas": want, "engines": names})

    # -- supervision ------------------------------------------------------------------

    def _watch(self) -> None:
        import ray

        while not self._stop.wait(WATCHDOG_SECONDS):
            with self._lock:
                actors = dict(self._actors)
            down: dict[str, str] = {}
            for name, handle in actors.items():
                try:
                    stats = ray.get(handle.stats.remote(), timeout=10)
                except (ray.exceptions.RayError, TimeoutError):
                    down[name] = self._down.get(name, "not answering")  # restarting, or busy starting
                    continue
                stalled = stats["inflight"] > 0 and stats["idle_seconds"] > self.stall_seconds
                if stats["errored"] or stalled:
                    why = "engine process died" if stats["errored"] else f"no progress for {stats['idle_seconds']:.0f} s"
                    log.error("restarting engine %s: %s", name, why, extra={"engine": name, "reason": why})
                    self.restarts += 1
                    if self.on_restart is not None:
                        self.on_restart(why)
                    ray.kill(handle, no_restart=False)
                    # A stalled engine process cannot notice its actor is gone: reap what it left.
                    reap_engine_processes(self._session, orphans_only=True)
                    down[name] = why
                elif not stats["ready"]:  # restarted by Ray, engine not built: build it now, not for the next batch
                    down[name] = self._down.get(name, "loading")
                    self._load(name, handle)
            self._down = down

    def _load(self, name: str, handle: Any) -> None:
        """Have a replica that is up but has no engine (Ray restarted it) load one: one probe at a time."""
        import ray

        pending = self._loading.get(name)
        if pending is None or ray.wait([pending], timeout=0)[0]:
            self._loading[name] = handle.probe.remote()

    def problem(self) -> str | None:
        """Why the engine cannot serve now (the runner's /ready), or None: loaded, and no replica restarting."""
        if not self.ready:
            return "the engine is not loaded, or has not answered its probe yet"
        down = self._down
        if down:
            return f"{len(down)} of {len(self._actors)} engine replicas are restarting ({sorted(down.values())[0]})"
        return None

    # -- running ----------------------------------------------------------------------

    def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
        if not chunks:
            return
        if not self.ready:
            raise EngineError("the engine is not started; use it as a context manager")
        wanted = {(c.model, TASK_OF_URL[c.endpoint]) for c in chunks}
        with self._lock:
            self._runs += 1
        try:
            # A kind the model does not serve (chat to an embedding model) goes to the kind it does, whose
            # engine answers each line with vLLM's own 400: no engine is started for it.
            engines = {(model, task): self.engines(model, self._serving(model, task)) for model, task in sorted(wanted)}
            yield from stream_chunks(self.settings, chunks, engines)
        finally:
            with self._lock:
                self._runs -= 1

    def _serving(self, model: str, task: str) -> str:
        """The engine kind that answers ``task`` for ``model``: itself if the model serves it."""
        tasks = self._tasks.get(model) or (task,)
        return task if task in tasks else tasks[0]
