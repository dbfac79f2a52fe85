"""The batching planner on known model shapes and budgets."""

from __future__ import annotations

import json

import pytest

from dropbatch.engine.planner import GIB, ModelShape, WorkShape, kv_cache_budget, plan_batching

# Qwen2.5-0.5B-Instruct's config.json (the fields the planner reads).
QWEN_05B = {
    "num_attention_heads": 14,
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
}
# The tiny local model `make model` builds.
TINY = {"num_attention_heads": 4, "hidden_size": 128, "num_hidden_layers": 2, "num_key_value_heads": 2}


def test_kv_bytes_per_token_of_qwen_half_b_in_bf16():
    shape = ModelShape.from_config(QWEN_05B, dtype="bfloat16", kv_cache_dtype=None, max_model_len=4096)
    # 2 (K,V) x 24 layers x 2 KV heads x 64 head size x 2 bytes
    assert shape.kv_bytes_per_token == 12_288
    assert shape.head_dim == 64


def test_fp8_kv_cache_halves_the_cost():
    bf16 = ModelShape.from_config(QWEN_05B, dtype="bfloat16", kv_cache_dtype=None, max_model_len=4096)
    fp8 = ModelShape.from_config(QWEN_05B, dtype="bfloat16", kv_cache_dtype="fp8", max_model_len=4096)
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token


def test_tiny_model_on_one_gib_of_cpu_kv_cache_is_capped_by_the_sequence_limit():
    shape = ModelShape.from_config(TINY, dtype="bfloat16", kv_cache_dtype=None, max_model_len=512)
    assert shape.kv_bytes_per_token == 512
    budget = kv_cache_budget(device="cpu", cpu_kvcache_gib=1)
    plan = plan_batching(kv_cache_bytes=budget, model=shape, work=WorkShape(2000, 20, 32))
    assert plan.kv_cache_tokens == GIB // 512 == 2_097_152
    assert plan.tokens_per_seq == 52
    assert plan.max_num_seqs == 256  # memory would allow 40k sequences; the cap holds
    assert plan.max_num_batched_tokens == 256 * 20
    assert plan.batch_size == 64  # 256 sequences over 8 concurrent batches, doubled for overlap


def test_memory_bound_plan_on_a_small_budget():
    shape = ModelShape.from_config(QWEN_05B, dtype="bfloat16", kv_cache_dtype=None, max_model_len=4096)
    # 100 MiB of KV cache: 8533 tokens; 1000-token sequences → 8 fit.
    plan = plan_batching(kv_cache_bytes=100 * 1024 * 1024, model=shape, work=WorkShape(1000, 488, 512))
    assert plan.kv_cache_tokens == 8533
    assert plan.tokens_per_seq == 1000
    assert plan.max_num_seqs == 8
    assert plan.max_num_batched_tokens == 4096  # never below max_model_len
    assert plan.batch_size == 2


def test_sequences_never_exceed_max_model_len_or_the_request_count():
    shape = ModelShape.from_config(TINY, dtype="bfloat16", kv_cache_dtype=None, max_model_len=512)
    plan = plan_batching(kv_cache_bytes=GIB, model=shape, work=WorkShape(3, 10_000, 10_000))
    assert plan.tokens_per_seq == 512
    assert plan.max_num_seqs == 3


def test_no_memory_still_plans_one_sequence():
    shape = ModelShape.from_config(TINY, dtype="bfloat16", kv_cache_dtype=None, max_model_len=512)
    plan = plan_batching(kv_cache_bytes=0, model=shape, work=WorkShape(10, 10, 10))
    assert plan.max_num_seqs == 1


def test_gpu_budget_subtracts_weights_and_activation_reserve():
    budget = kv_cache_budget(
        device="gpu", cpu_kvcache_gib=1, gpu_memory_bytes=24 * GIB, gpu_memory_utilization=0.9, weight_bytes=GIB
    )
    assert budget == int(24 * GIB * 0.8 - GIB)
    assert kv_cache_budget(device="gpu", cpu_kvcache_gib=1, gpu_memory_bytes=None) is None


def test_tensor_parallel_pools_the_shards_memory():
    one = kv_cache_budget(device="gpu", cpu_kvcache_gib=1, gpu_memory_bytes=24 * GIB, weight_bytes=2 * GIB)
    two = kv_cache_budget(
        device="gpu", cpu_kvcache_gib=1, gpu_memory_bytes=24 * GIB, weight_bytes=2 * GIB, tensor_parallel_size=2
    )
    assert two - one == pytest.approx(24 * GIB * 0.8, rel=1e-9)


def test_shape_from_a_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    shape = ModelShape.from_model_dir(tmp_path, dtype="float32", kv_cache_dtype=None, max_model_len=None)
    assert shape.weight_bytes == 1000
    assert shape.kv_dtype_bytes == 4
    assert shape.max_model_len == 2048  # falls back to the config's default
