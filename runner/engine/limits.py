"""Engine limits from the planner, decided once when the warm engine starts.

A warm engine serves every batch, so it is sized for the typical request the
settings describe (a prompt of a quarter of the context, ``default_max_tokens``
out) rather than for one job. Explicit ``DROPBATCH_MAX_NUM_SEQS`` /
``DROPBATCH_MAX_NUM_BATCHED_TOKENS`` win; a hub id not downloaded yet leaves vLLM's defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dropbatch.engine.planner import ModelShape, WorkShape, kv_cache_budget, plan_batching
from dropbatch.settings import EngineSettings

log = logging.getLogger("dropbatch.engine")

NOMINAL_REQUESTS = 10_000  # "many": a warm engine always has more work coming


def engine_limits(engine: EngineSettings, *, device: str, gpu_memory_bytes: int | None) -> dict[str, int]:
    """``max_num_seqs`` / ``max_num_batched_tokens`` for vLLM (only the ones the settings leave unset)."""
    wanted = {"max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens}
    path = Path(engine.model)
    if all(v is not None for v in wanted.values()) or not (path / "config.json").is_file():
        return {k: v for k, v in wanted.items() if v is not None}
    model = ModelShape.from_model_dir(
        path, dtype=engine.dtype, kv_cache_dtype=engine.kv_cache_dtype, max_model_len=engine.max_model_len
    )
    budget = kv_cache_budget(
        device=device,
        cpu_kvcache_gib=engine.cpu_kvcache_gib,
        gpu_memory_bytes=gpu_memory_bytes,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        weight_bytes=model.weight_bytes,
        tensor_parallel_size=engine.tensor_parallel_size,
    )
    if budget is None:
        return {k: v for k, v in wanted.items() if v is not None}
    work = WorkShape(
        requests=NOMINAL_REQUESTS,
        mean_prompt_tokens=model.max_model_len / 4,
        max_new_tokens=min(engine.default_max_tokens, model.max_model_len),
    )
    plan = plan_batching(kv_cache_bytes=budget, model=model, work=work)
    log.info("engine limits planned", extra={"max_num_seqs": plan.max_num_seqs,
                                             "max_num_batched_tokens": plan.max_num_batched_tokens})
    planned = {"max_num_seqs": plan.max_num_seqs, "max_num_batched_tokens": plan.max_num_batched_tokens}
    return {k: v if v is not None else planned[k] for k, v in wanted.items()}


def gpu_memory_bytes() -> int | None:
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
