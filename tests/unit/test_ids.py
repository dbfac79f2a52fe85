"""Content addresses and line ids: derived from content, stable across reruns."""

from __future__ import annotations

from typing import Any

import pytest

from dropbatch.engine.requests import engine_fingerprint
from dropbatch.ids import (
    batch_id_for,
    completion_id,
    content_address,
    output_file_id,
    request_line_id,
    response_request_id,
)
from dropbatch.settings import EngineSettings

BASE: dict[str, Any] = {
    "input_sha256s": ["a" * 64],
    "model": "dropbatch-tiny",
    "endpoint": "/v1/chat/completions",
    "engine_fingerprint": {"dtype": "bfloat16", "max_model_len": 512},
}


def test_content_address_is_stable() -> None:
    first = content_address(**BASE)
    assert first == content_address(**{**BASE, "input_sha256s": tuple(BASE["input_sha256s"])})
    assert first == content_address(**{**BASE, "engine_fingerprint": dict(reversed(list(BASE["engine_fingerprint"].items())))})
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"input_sha256s": ["b" * 64]},
        {"input_sha256s": ["a" * 64, "a" * 64]},
        {"input_sha256s": []},
        {"model": "dropbatch-tiny-2"},
        {"endpoint": "/v1/completions"},
        {"engine_fingerprint": {"dtype": "float32", "max_model_len": 512}},
        {"engine_fingerprint": {"dtype": "bfloat16", "max_model_len": 1024}},
        {"engine_fingerprint": {"dtype": "bfloat16", "max_model_len": 512, "kv_cache_dtype": "fp8"}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_content_address_changes_with_any_part(change: dict[str, Any]) -> None:
    assert content_address(**{**BASE, **change}) != content_address(**BASE)


def test_input_order_matters() -> None:
    two = {**BASE, "input_sha256s": ["a" * 64, "b" * 64]}
    swapped = {**BASE, "input_sha256s": ["b" * 64, "a" * 64]}
    assert content_address(**two) != content_address(**swapped)


def test_engine_fingerprint_tracks_output_changing_settings() -> None:
    base = EngineSettings()
    assert engine_fingerprint(base) == engine_fingerprint(EngineSettings())
    for change in ({"max_model_len": 1024}, {"dtype": "float32"}, {"model": "other"}, {"default_max_tokens": 7},
                   {"tool_call_parser": None}, {"structured_outputs_config": None}):
        assert engine_fingerprint(base.model_copy(update=change)) != engine_fingerprint(base)
    # Each served model has its own fingerprint.
    several = EngineSettings(models={"chat": "/m/chat", "embed": "/m/embed"})
    assert engine_fingerprint(several.for_model("chat")) != engine_fingerprint(several.for_model("embed"))
    # Throughput knobs do not change what the work is.
    assert engine_fingerprint(base.model_copy(update={"max_num_seqs": 8, "concurrency": 3})) == engine_fingerprint(base)


def test_line_ids_are_deterministic_and_distinct() -> None:
    assert request_line_id("sha", "c1") == request_line_id("sha", "c1")
    assert request_line_id("sha", "c1").startswith("batch_req_")
    ids = {
        request_line_id("sha", "c1"),
        request_line_id("sha", "c2"),
        request_line_id("sha2", "c1"),
        response_request_id("sha", "c1"),
        completion_id("sha", "c1", "chatcmpl"),
    }
    assert len(ids) == 5
    assert response_request_id("sha", "c1").startswith("req_")
    assert completion_id("sha", "c1", "cmpl").startswith("cmpl-")
    # Part boundaries are unambiguous: ("ab", "c") is not ("a", "bc").
    assert request_line_id("ab", "c") != request_line_id("a", "bc")


def test_batch_and_file_ids() -> None:
    assert batch_id_for("acme", "j1", "m" * 64) == batch_id_for("acme", "j1", "m" * 64)
    assert batch_id_for("acme", "j1", "m" * 64).startswith("batch_")
    assert len({batch_id_for("acme", "j1", "m"), batch_id_for("acme", "j2", "m"), batch_id_for("acme", "j1", "n"), batch_id_for("acm", "ej1", "m")}) == 4
    assert output_file_id("b1", "output") == output_file_id("b1", "output") != output_file_id("b1", "errors")
