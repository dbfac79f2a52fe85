"""The real engine: vLLM through Ray Data's ``ray.data.llm`` processor.

One ``run`` is one Ray Data pipeline over a list of chunks:

    from_items(chunks) → flat_map(read chunk from S3 → request rows)
      → map_batches(ChatTemplater)          (chat only; one tokenizer per actor)
      → build_processor(vLLMEngineProcessorConfig)   (the vLLM engine actor)
      → driver: iter_rows → LineAssembler → LineResult

ray.data.llm's own chat-template / tokenize / detokenize stages are switched off:
each is an actor that imports vLLM (~10 s apiece on 2 cores), while templating in
one small actor of ours and letting vLLM tokenize and detokenize itself gives the
same text and starts in ~25 s instead of ~35 s (measured, see the README).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.engine.planner import CHARS_PER_TOKEN, ModelShape, Plan, WorkShape, kv_cache_budget, plan_batching
from dropbatch.engine.requests import EMBED, TASK_OF_ENDPOINT
from dropbatch.engine.rows import LineAssembler, read_chunk, request_rows
from dropbatch.errors import ConfigError, EngineError
from dropbatch.settings import EngineSettings, Settings

log = logging.getLogger("dropbatch.engine")

# Small CPU stages get fractions of a CPU so that on 2 cores they never wait
# behind the engine actor for a whole logical CPU (which deadlocks the pipeline).
STAGE_CPUS = 0.25
# Chat templates add a few tokens per message around the text itself.
TEMPLATE_TOKENS = 16
# Columns the driver needs back; everything else (token ids, logprobs) stays in Ray.
_KEEP = (
    "batch_id", "chunk", "custom_id", "sub_index", "sub_count", "preflight_error", "max_tokens",
    "generated_text", "num_generated_tokens", "num_input_tokens", "embeddings", "__inference_error__",
)


SESSION_VAR = "DROPBATCH_ENGINE_SESSION"


def worker_env(engine: EngineSettings, session: str) -> dict[str, str]:
    """Environment for Ray workers: no telemetry, a fixed CPU KV cache, our session tag.

    A local model folder runs fully offline; a hub id (``Qwen/Qwen2.5-0.5B-Instruct``)
    may download on first use.
    """
    offline = "1" if Path(engine.model).is_dir() else "0"
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


class _ChunkReader:
    """flat_map function: one chunk descriptor → its request rows (reads S3 in the worker)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store = None

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        if self._store is None:
            from dropbatch.storage.s3 import S3ObjectStore

            self._store = S3ObjectStore(self.settings.storage)
        chunk = WorkChunk(**item)
        data = read_chunk(chunk, self._store)
        return list(
            request_rows(chunk, data, self.settings.engine, max_line_bytes=self.settings.limits.max_line_bytes)
        )


class ChatTemplater:
    """map_batches actor: applies the model's chat template to ``messages_json`` rows."""

    def __init__(self, model: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prompts = list(batch["prompt"])
        for i, messages in enumerate(batch["messages_json"]):
            if messages:
                prompts[i] = self.tokenizer.apply_chat_template(
                    json.loads(messages), tokenize=False, add_generation_prompt=True
                )
        batch["prompt"] = prompts
        return batch


def _slim(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _KEEP if name in row}


class RayVLLMEngine:
    """``Engine`` on vLLM via ray.data.llm. Ray starts in ``__enter__``, never in ``__init__``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._started_ray = False
        self._device: str | None = None
        self._gpu_memory: int | None = None
        self._session = secrets.token_hex(8)

    def __enter__(self) -> RayVLLMEngine:
        import ray

        engine = self.settings.engine
        os.environ.update(worker_env(engine, self._session))  # the local Ray cluster's workers inherit it
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "runtime_env": {"env_vars": worker_env(engine, self._session)},
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
        self._device = self._resolve_device(ray.cluster_resources())
        if self._device == "gpu":
            self._gpu_memory = _gpu_memory_bytes()
        log.info("engine ready", extra={"device": self._device, "model": engine.model})
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
        reap_engine_processes(self._session, orphans_only=False)

    def _resolve_device(self, resources: dict[str, float]) -> str:
        wanted = self.settings.engine.device
        has_gpu = resources.get("GPU", 0) > 0
        if wanted == "gpu" and not has_gpu:
            raise ConfigError("DROPBATCH_DEVICE=gpu but the Ray cluster has no GPU")
        return "gpu" if wanted == "gpu" or (wanted == "auto" and has_gpu) else "cpu"

    def plan(self, chunks: Sequence[WorkChunk]) -> Plan | None:
        """Batching limits for this pass from the KV budget and the chunks' sizes (None: vLLM decides)."""
        engine = self.settings.engine
        path = Path(engine.model)
        lines = sum(c.lines for c in chunks)
        if not (path / "config.json").is_file() or not lines:
            return None  # a hub id not yet downloaded: no shape to plan with
        model = ModelShape.from_model_dir(
            path, dtype=engine.dtype, kv_cache_dtype=engine.kv_cache_dtype, max_model_len=engine.max_model_len
        )
        budget = kv_cache_budget(
            device=self._device or "cpu",
            cpu_kvcache_gib=engine.cpu_kvcache_gib,
            gpu_memory_bytes=self._gpu_memory,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            weight_bytes=model.weight_bytes,
            tensor_parallel_size=engine.tensor_parallel_size,
        )
        if budget is None:
            return None
        work = WorkShape(
            requests=lines,
            mean_prompt_tokens=sum(c.prompt_chars for c in chunks) / lines / CHARS_PER_TOKEN + TEMPLATE_TOKENS,
            max_new_tokens=max(c.max_tokens for c in chunks),
        )
        return plan_batching(kv_cache_bytes=budget, model=model, work=work)

    def processor_config(self, task: str, plan: Plan | None = None):
        """The ``vLLMEngineProcessorConfig`` for ``task`` ("generate" or "embed"); settings beat the plan."""
        from ray.data.llm import vLLMEngineProcessorConfig

        engine = self.settings.engine
        kwargs: dict[str, Any] = {
            "dtype": engine.dtype,
            "max_model_len": engine.max_model_len,
            "enforce_eager": engine.enforce_eager,
            "enable_chunked_prefill": engine.enable_chunked_prefill,
            "enable_prefix_caching": engine.enable_prefix_caching,
            "speculative_config": engine.speculative_config,
            "kv_cache_dtype": engine.kv_cache_dtype,
            "max_num_seqs": engine.max_num_seqs or (plan.max_num_seqs if plan else None),
            "max_num_batched_tokens": engine.max_num_batched_tokens or (plan.max_num_batched_tokens if plan else None),
            "tensor_parallel_size": engine.tensor_parallel_size,
            "pipeline_parallel_size": engine.pipeline_parallel_size,
            "served_model_name": engine.model_name,
        }
        if self._device == "gpu":
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        engine_kwargs = {k: v for k, v in kwargs.items() if v is not None}
        placement = None
        if self._device == "cpu":
            # Without CPU-only bundles the engine stage asks Ray for a GPU and waits forever.
            shards = engine.tensor_parallel_size * engine.pipeline_parallel_size
            placement = {"bundles": [{"CPU": 1}] * shards, "strategy": "PACK"}
        return vLLMEngineProcessorConfig(
            model_source=engine.model,
            engine_kwargs=engine_kwargs,
            task_type=task,
            batch_size=engine.batch_size or (plan.batch_size if plan else 64),
            concurrency=engine.concurrency,
            placement_group_config=placement,
            chat_template_stage=False,
            tokenize_stage=False,
            detokenize_stage=False,
            should_continue_on_error=True,
            log_engine_metrics=False,
            runtime_env={"env_vars": worker_env(engine, self._session)},
        )

    def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
        if not chunks:
            return
        import ray
        from ray.data.llm import build_processor

        if self._device is None:
            raise EngineError("the engine is not started; use it as a context manager")
        tasks = {TASK_OF_ENDPOINT[c.endpoint] for c in chunks}
        if len(tasks) != 1:
            raise EngineError(f"one engine pass runs one task, got {sorted(tasks)}")
        task = tasks.pop()
        ds = ray.data.from_items([asdict(c) for c in chunks], override_num_blocks=len(chunks))
        ds = ds.flat_map(_ChunkReader(self.settings), num_cpus=STAGE_CPUS)
        if any(c.endpoint == "/v1/chat/completions" for c in chunks):
            ds = ds.map_batches(
                ChatTemplater,
                fn_constructor_kwargs={"model": self.settings.engine.model},
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=STAGE_CPUS,
                batch_size=256,
            )
        plan = self.plan(chunks)
        log.info("engine pass", extra={"task": task, "lines": sum(c.lines for c in chunks), "plan": plan})
        processor = build_processor(
            self.processor_config(task, plan),
            postprocess=_slim,
            postprocess_map_kwargs={"num_cpus": STAGE_CPUS},
        )
        assembler = LineAssembler({(c.batch_id, c.chunk): c for c in chunks})
        expected = sum(len(c.only) or c.lines for c in chunks) if task != EMBED else None
        produced = 0
        try:
            for row in processor(ds).iter_rows():
                result = assembler.add(row)
                if result is not None:
                    produced += 1
                    yield result
        except ray.exceptions.RayError as exc:
            raise EngineError(f"the engine pipeline failed: {exc}") from exc
        finally:
            reap_engine_processes(self._session, orphans_only=True)
        if expected is not None and produced < expected:
            raise EngineError(f"the engine returned {produced} of {expected} lines")


def _gpu_memory_bytes() -> int | None:
    """Total memory of one GPU of the cluster, asked of a GPU worker (the driver may have none)."""
    import ray

    @ray.remote(num_gpus=1)
    def probe() -> int:
        import torch

        return torch.cuda.get_device_properties(0).total_memory

    try:
        return int(ray.get(probe.remote(), timeout=120))
    except (ray.exceptions.RayError, TimeoutError):
        log.warning("could not read GPU memory; vLLM sizes its own batches")
        return None


def reap_engine_processes(session: str, *, orphans_only: bool, grace_seconds: float = 5.0) -> int:
    """Kill vLLM engine processes of ``session`` that outlived their Ray actor.

    Ray Data stops a finished pass's engine actor without always letting vLLM shut
    down, and ``ray.shutdown()`` kills actors outright: their ``VLLM::EngineCore`` /
    ``VLLM::Worker`` children are re-parented to init and keep ~1.5 GB each. Only
    processes carrying this engine's session tag are touched (this machine may run
    other engines). Local processes only; on a multi-node cluster each node's
    raylet owns its workers.
    """
    import psutil

    deadline = time.monotonic() + grace_seconds
    killed = 0
    while True:
        victims = []
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            try:
                if not (proc.info["cmdline"] or [""])[0].startswith("VLLM::"):
                    continue
                if orphans_only and proc.info["ppid"] != 1:
                    continue
                if proc.environ().get(SESSION_VAR) == session:
                    victims.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not victims:
            return killed
        if not orphans_only or time.monotonic() >= deadline:
            for proc in victims:
                try:
                    proc.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(victims, timeout=10)
            return killed
        time.sleep(0.5)  # orphans often exit by themselves once their pipes close
