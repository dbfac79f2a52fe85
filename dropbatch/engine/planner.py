"""Adaptive batching: engine limits and batch sizes derived from memory and the work at hand.

A pure function of numbers, so it is tested on known shapes:

    KV bytes per token   = 2 (K and V) × layers × KV heads × head size × KV dtype bytes
    KV cache budget      = CPU: VLLM_CPU_KVCACHE_SPACE GiB;
                           GPU: memory × gpu_memory_utilization − weights − activation reserve
    tokens per sequence  = min(max_model_len, mean prompt tokens + max new tokens)
    max_num_seqs         = how many such sequences fit in the budget (capped)
    max_num_batched_tokens = enough to prefill a step's worth of prompts, never below
                           max_model_len (vLLM refuses that without chunked prefill)
    batch_size           = rows per Ray Data batch, so that batch_size × concurrent
                           batches keeps max_num_seqs sequences in the engine

Explicit settings always win over the plan (``EngineSettings.max_num_seqs`` etc.).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
CHARS_PER_TOKEN = 4.0  # English text through a BPE tokenizer; only used before tokenization
MAX_SEQS_CAP = 256  # vLLM's own default on most GPUs; more rarely helps and costs latency
ACTIVATION_RESERVE = 0.1  # of GPU memory, for activations and the sampler
CONCURRENT_BATCHES = 8  # ray.data.llm's max_concurrent_batches default


@dataclass(frozen=True)
class ModelShape:
    """What the KV cache of one token costs for a model."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int
    max_model_len: int
    weight_bytes: int = 0

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes

    @classmethod
    def from_config(
        cls, config: dict, *, dtype: str, kv_cache_dtype: str | None, max_model_len: int | None, weight_bytes: int = 0
    ) -> ModelShape:
        """From a Hugging Face ``config.json`` dict."""
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        kv_dtype = kv_cache_dtype if kv_cache_dtype and kv_cache_dtype != "auto" else dtype
        return cls(
            num_layers=config["num_hidden_layers"],
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=head_dim,
            kv_dtype_bytes=DTYPE_BYTES.get(kv_dtype, 2),
            max_model_len=max_model_len or config.get("max_position_embeddings", 2048),
            weight_bytes=weight_bytes,
        )

    @classmethod
    def from_model_dir(cls, path: Path, *, dtype: str, kv_cache_dtype: str | None, max_model_len: int | None) -> ModelShape:
        config = json.loads((path / "config.json").read_text())
        weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        return cls.from_config(
            config, dtype=dtype, kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len, weight_bytes=weights
        )


@dataclass(frozen=True)
class WorkShape:
    """The requests of one engine pass, summarized."""

    requests: int
    mean_prompt_tokens: float
    max_new_tokens: int


@dataclass(frozen=True)
class Plan:
    max_num_seqs: int
    max_num_batched_tokens: int
    batch_size: int
    kv_cache_tokens: int
    tokens_per_seq: int


def kv_cache_budget(
    *,
    device: str,
    cpu_kvcache_gib: int,
    gpu_memory_bytes: int | None = None,
    gpu_memory_utilization: float = 0.9,
    weight_bytes: int = 0,
    tensor_parallel_size: int = 1,
) -> int | None:
    """Bytes of KV cache the engine will have; None when the GPU's size is unknown."""
    if device == "cpu":
        return cpu_kvcache_gib * GIB
    if not gpu_memory_bytes:
        return None
    usable = gpu_memory_bytes * (gpu_memory_utilization - ACTIVATION_RESERVE) * tensor_parallel_size
    return max(0, int(usable - weight_bytes))


def plan_batching(*, kv_cache_bytes: int, model: ModelShape, work: WorkShape, max_seqs_cap: int = MAX_SEQS_CAP) -> Plan:
    """Engine limits for ``work`` on ``model`` within ``kv_cache_bytes``."""
    tokens_per_seq = max(1, min(model.max_model_len, math.ceil(work.mean_prompt_tokens) + work.max_new_tokens))
    kv_tokens = kv_cache_bytes // model.kv_bytes_per_token
    seqs = kv_tokens // tokens_per_seq
    seqs = max(1, min(seqs, max_seqs_cap, max(1, work.requests)))
    # One engine step should be able to prefill every admitted prompt at once.
    prefill = math.ceil(seqs * max(1.0, work.mean_prompt_tokens))
    batched_tokens = max(model.max_model_len, min(prefill, 16 * 1024))
    batch_size = max(1, min(512, math.ceil(seqs / CONCURRENT_BATCHES) * 2))
    return Plan(
        max_num_seqs=seqs,
        max_num_batched_tokens=batched_tokens,
        batch_size=batch_size,
        kv_cache_tokens=kv_tokens,
        tokens_per_seq=tokens_per_seq,
    )
