"""Chunk bytes → engine rows, and engine rows → one OpenAI result line per custom_id.

Both directions are plain functions over dicts so they run unchanged in Ray
workers (the real engine) and in-process (the test engine).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.engine.requests import (
    EMBED,
    TASK_OF_ENDPOINT,
    chat_completion_body,
    chat_messages,
    completion_prompt,
    embedding_body,
    embedding_inputs,
    finish_reason,
    sampling_params,
    text_completion_body,
)
from dropbatch.errors import InputChanged, InvalidRequest, openai_error
from dropbatch.jsonl import iter_lines, parse_request_line, result_line
from dropbatch.settings import EngineSettings
from dropbatch.storage.base import ObjectStore

# Every generate row carries the same sampling keys so Arrow sees one schema.
_SAMPLING_DEFAULTS: dict[str, Any] = {
    "max_tokens": 16,
    "n": 1,
    "detokenize": True,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "min_tokens": 0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "ignore_eos": False,
    "seed": None,
    "stop": [],
}


def read_chunk(chunk: WorkChunk, store: ObjectStore) -> bytes:
    """The chunk's bytes, checked against the sha256 recorded at admission."""
    data = b"".join(store.iter_bytes(chunk.bucket, chunk.key, start=chunk.start, end=chunk.end))
    if hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise InputChanged(f"s3://{chunk.bucket}/{chunk.key} changed after it was admitted")
    return data


def request_rows(chunk: WorkChunk, data: bytes, engine: EngineSettings, *, max_line_bytes: int) -> Iterator[dict[str, Any]]:
    """Engine rows for every request line in ``data`` (one per embedding input).

    A line the engine cannot serve still yields a row, flagged ``preflight_error``
    with a one-token stand-in prompt, so every custom_id comes back through the
    same pipeline and lands exactly once in the results.
    """
    task = TASK_OF_ENDPOINT[chunk.endpoint]
    only = frozenset(chunk.only)
    lines = iter_lines([data], max_line_bytes=max_line_bytes, start_offset=chunk.start, first_number=chunk.first_line)
    for raw in lines:
        base = {
            "batch_id": chunk.batch_id,
            "chunk": chunk.chunk,
            "custom_id": f"__line_{raw.number}",
            "preflight_error": "",
            "messages_json": "",
            "prompt": "",
            "sub_index": 0,
            "sub_count": 1,
        }
        try:
            request = parse_request_line(raw, endpoint=chunk.endpoint, model=chunk.model)
            if only and request.custom_id not in only:
                continue
            base["custom_id"] = request.custom_id
            if task == EMBED:
                inputs = embedding_inputs(request.body)
                for index, text in enumerate(inputs):
                    yield {**base, "prompt": text, "sub_index": index, "sub_count": len(inputs)}
                continue
            params = {**_SAMPLING_DEFAULTS, **sampling_params(request.body, engine)}
            # The engine stage consumes sampling_params; keep the budget for finish_reason.
            base["max_tokens"] = params["max_tokens"]
            if chunk.endpoint == "/v1/chat/completions":
                base["messages_json"] = json.dumps(chat_messages(request.body))
            else:
                base["prompt"] = completion_prompt(request.body)
            yield {**base, "sampling_params": params}
        except InvalidRequest as exc:  # UnservableRequest included
            problem = {"code": exc.code, "message": exc.message, "param": exc.param}
            stand_in = {"prompt": "x"}
            if task != EMBED:
                stand_in["sampling_params"] = {**_SAMPLING_DEFAULTS, "max_tokens": 1}
                stand_in["max_tokens"] = 1
            yield {**base, **stand_in, "preflight_error": json.dumps(problem)}


class LineAssembler:
    """Collects engine output rows into final result lines (embedding inputs are regrouped)."""

    def __init__(self, chunks: dict[tuple[str, int], WorkChunk], *, engine_error_code: str = "engine_error") -> None:
        self.chunks = chunks
        self._parts: dict[tuple[str, int, str], dict[int, dict[str, Any]]] = {}

    def add(self, row: dict[str, Any]) -> LineResult | None:
        key = (row["batch_id"], int(row["chunk"]), row["custom_id"])
        parts = self._parts.setdefault(key, {})
        parts[int(row["sub_index"])] = row
        if len(parts) < int(row["sub_count"]):
            return None
        del self._parts[key]
        return finish_line(self.chunks[key[:2]], [parts[i] for i in sorted(parts)])


def finish_line(chunk: WorkChunk, rows: list[dict[str, Any]]) -> LineResult:
    """The OpenAI result line for one custom_id from its engine output row(s)."""
    custom_id = rows[0]["custom_id"]
    prompt_tokens = sum(int(r.get("num_input_tokens") or 0) for r in rows)
    completion_tokens = 0
    preflight = next((r["preflight_error"] for r in rows if r.get("preflight_error")), "")
    failure = next((r["__inference_error__"] for r in rows if r.get("__inference_error__")), "")
    if preflight:
        problem = json.loads(preflight)
        status, body = 400, _invalid(problem["message"], code=problem["code"], param=problem.get("param"))
        prompt_tokens = 0
    elif failure:
        status, body = _engine_failure(failure)
        prompt_tokens = 0
    elif chunk.endpoint == "/v1/embeddings":
        vectors = [[float(x) for x in r["embeddings"]] for r in rows]
        status, body = 200, embedding_body(model=chunk.model, vectors=vectors, prompt_tokens=prompt_tokens)
    else:
        row = rows[0]
        completion_tokens = int(row.get("num_generated_tokens") or 0)
        limit = int(row["max_tokens"])
        build = chat_completion_body if chunk.endpoint == "/v1/chat/completions" else text_completion_body
        body = build(
            content_sha256=chunk.content_sha256,
            custom_id=custom_id,
            model=chunk.model,
            created=chunk.created,
            text=row.get("generated_text") or "",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish=finish_reason(completion_tokens, limit),
        )
        status = 200
    return LineResult(
        batch_id=chunk.batch_id,
        chunk=chunk.chunk,
        custom_id=custom_id,
        line=result_line(chunk.content_sha256, custom_id, status, body),
        ok=status == 200,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def _invalid(message: str, *, code: str, param: str | None = None) -> dict[str, Any]:
    return openai_error(message, type_="invalid_request_error", code=code, param=param)


def _engine_failure(message: str) -> tuple[int, dict[str, Any]]:
    """Map vLLM's per-request exception text to an OpenAI error body."""
    lowered = message.lower()
    if "longer than the maximum model length" in lowered or "maximum context length" in lowered or "max_model_len" in lowered:
        return 400, _invalid(
            "This request's prompt is longer than the model's maximum context length. " + message,
            code="context_length_exceeded",
            param="messages",
        )
    if "valueerror" in lowered or "validation" in lowered:
        return 400, _invalid(message, code="invalid_request")
    return 500, openai_error(message, type_="server_error", code="engine_error")
