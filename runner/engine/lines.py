"""Answer rows from the warm engine → the OpenAI result line for each custom_id.

vLLM's body is kept as its OpenAI server answers it; only ``id`` and ``created``
are replaced by values derived from the content address and custom_id, so a
rerun of the same work writes the same bytes (no uuid4, no wall clock).
"""

from __future__ import annotations

import json
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.ids import completion_id
from dropbatch.jsonl import result_line

_ID_PREFIX = {"/v1/chat/completions": "chatcmpl", "/v1/completions": "cmpl", "/v1/embeddings": "embd"}


def line_result(chunk: WorkChunk, row: dict[str, Any]) -> LineResult:
    custom_id = str(row["custom_id"])
    status = int(row["status"])
    body = json.loads(row["body_json"])
    if status == 200:
        if "id" in body:
            body["id"] = completion_id(chunk.content_sha256, custom_id, _ID_PREFIX[chunk.endpoint])
        if "created" in body:
            body["created"] = chunk.created
    ok = status == 200
    return LineResult(
        batch_id=chunk.batch_id,
        chunk=chunk.chunk,
        custom_id=custom_id,
        line=result_line(chunk.content_sha256, custom_id, status, body),
        ok=ok,
        prompt_tokens=int(row["prompt_tokens"]) if ok else 0,
        completion_tokens=int(row["completion_tokens"]) if ok else 0,
    )
