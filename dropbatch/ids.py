"""Identifiers derived from content, never from uuid4, so reruns produce identical bytes."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def batch_id_for(tenant: str, job: str, manifest_sha256: str) -> str:
    """One batch per (tenant, job, exact manifest bytes): duplicate S3 events map to it."""
    return "batch_" + _digest("batch", tenant, job, manifest_sha256)[:32]


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def output_file_id(batch_id: str, kind: str) -> str:
    """The File id of a batch's ``output`` or ``errors`` object (stable per batch)."""
    return "file-" + _digest("result", batch_id, kind)[:24]


def request_line_id(content_sha256: str, custom_id: str) -> str:
    """``batch_req_…`` id of one output/error line, stable for the same work."""
    return "batch_req_" + _digest("line", content_sha256, custom_id)[:32]


def response_request_id(content_sha256: str, custom_id: str) -> str:
    """``response.request_id`` of one output line."""
    return "req_" + _digest("request", content_sha256, custom_id)[:32]


def completion_id(content_sha256: str, custom_id: str, prefix: str, separator: str = "-") -> str:
    """``chatcmpl-…`` / ``cmpl-…`` / ``resp_…`` id inside a response body."""
    return f"{prefix}{separator}" + _digest("completion", content_sha256, custom_id)[:24]


def tool_call_id(content_sha256: str, custom_id: str, choice: int, index: int) -> str:
    """``call_…`` id of one tool call in an answer, stable for the same work (vLLM draws it at random)."""
    return "call_" + _digest("tool_call", content_sha256, custom_id, str(choice), str(index))[:24]


def content_address(
    *,
    input_sha256s: Sequence[str],
    model: str,
    endpoint: str,
    engine_fingerprint: Mapping[str, Any],
    sampled_batch_id: str | None = None,
) -> str:
    """The sha256 that names an output prefix: input bytes + model + endpoint + engine parameters.

    Two jobs with the same address are the same work; the second is answered from
    the first's outbox prefix without running the engine. That holds only when the
    answers are a function of the bytes: a batch with any sampled line (temperature
    above 0 and no seed) passes its batch id as ``sampled_batch_id``, so its address
    is its own and a resubmission runs again.
    """
    document = {
        "inputs": list(input_sha256s),
        "model": model,
        "endpoint": endpoint,
        "engine": dict(engine_fingerprint),
    }
    if sampled_batch_id is not None:
        document["sampled_batch"] = sampled_batch_id
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
