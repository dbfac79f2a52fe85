"""How a warm engine is started: vLLM's command-line flags and the Ray workers' environment.

Both come from the engine settings alone, so the benchmark's raw-vLLM peer and the
parity test can start vLLM exactly as the warm engine does.
"""

from __future__ import annotations

import json
from pathlib import Path

from dropbatch.settings import EngineSettings
from runner.engine.reap import SESSION_VAR


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
