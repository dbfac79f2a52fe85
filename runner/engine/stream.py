"""Ray Data stages of one engine run: chunk descriptors → request rows → warm-engine answers.

    from_items(chunks) → flat_map(ChunkReader: byte range from S3 → one row per line)
      → map_batches(EngineAsker: rows → the named engine actor → answers) → driver

Rows carry the request body as one JSON string column, so Arrow never widens an
optional integer to a float or unifies nested objects across rows; vLLM's own
request models parse the text inside the engine actor. Both stages run as Ray
tasks (whose worker processes Ray reuses) and import no vLLM.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from dropbatch.engine.base import WorkChunk
from dropbatch.engine.rows import read_chunk
from dropbatch.errors import InvalidRequest, openai_error
from dropbatch.jsonl import iter_lines, parse_request_line
from dropbatch.settings import Settings, StorageSettings
from dropbatch.storage.base import ObjectStore
from runner.schedule import line_priority

# An answer row for a line the engine never saw (unparseable now, or the engine died under it).
RESTARTED = "The engine was restarting for longer than the stall window; this request will be retried."


def engine_name(model: str, task: str, replica: int) -> str:
    return f"dropbatch-engine/{model}/{task}/{replica}"


class ChunkReader:
    """flat_map callable: one chunk descriptor → one row per request line (reads S3 in the worker)."""

    def __init__(self, settings: Settings, engines: dict[tuple[str, str], list[str]]) -> None:
        self.settings = settings
        self.engines = engines  # (model, task) → actor names (replicas)

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        chunk = WorkChunk(**item)
        from runner.engine.server import TASK_OF_URL

        names = self.engines[(chunk.model, TASK_OF_URL[chunk.endpoint])]
        engine = names[chunk.chunk % len(names)]
        data = read_chunk(chunk, worker_store(self.settings.storage))
        return request_rows(chunk, data, engine, self.settings.limits.max_line_bytes,
                            by_prefix=self.settings.engine.order_by_prefix)


@functools.cache
def worker_store(storage: StorageSettings) -> ObjectStore:
    """One S3 store per Ray worker process and storage settings.

    The read stage runs as Ray tasks, each with a fresh copy of its ``ChunkReader``: a store made
    per call built a boto3 client (its service model parsed from JSON) for every chunk, ~0.2 CPU s
    each, the read stage's largest cost in the steady-state profile.
    """
    from dropbatch.storage.s3 import S3ObjectStore

    return S3ObjectStore(storage)


def request_rows(chunk: WorkChunk, data: bytes, engine: str, max_line_bytes: int, *,
                 by_prefix: bool = True, now: float | None = None) -> list[dict[str, Any]]:
    """One row per line of ``data`` (only the retried ones when ``chunk.only`` is set).

    Lines go to the engine sorted by their prompt (``by_prefix``), so requests that share a prefix (a
    system prompt, a few-shot block) run together and reuse its KV cache; each carries
    its vLLM priority in that order (``runner/schedule.py``). Results are matched by
    custom_id, so the output order does not change.
    """
    only = frozenset(chunk.only)
    rows, asked = [], []
    for raw in iter_lines([data], max_line_bytes=max_line_bytes, start_offset=chunk.start, first_number=chunk.first_line):
        row = {"batch_id": chunk.batch_id, "chunk": chunk.chunk, "custom_id": f"__line_{raw.number}",
               "url": chunk.endpoint, "engine": engine, "body_json": "", "status": 0, "prompt_tokens": 0,
               "completion_tokens": 0}
        try:
            request = parse_request_line(raw, endpoint=chunk.endpoint, model=chunk.model)
        except InvalidRequest as exc:  # admitted lines parse; this guards a line that no longer does
            row.update(status=400, body_json=json.dumps(exc.to_openai()))
            rows.append(row)
            continue
        if only and request.custom_id not in only:
            continue
        row["custom_id"] = request.custom_id
        asked.append((prefix_key(request.body) if by_prefix else "", row, request.body))
    asked.sort(key=lambda item: item[0])  # stable: unsorted keeps the file's order
    now = time.time() if now is None else now
    for index, (_key, row, body) in enumerate(asked):
        priority = line_priority(chunk, index, now)
        if priority is not None:
            body = {**body, "priority": priority}
        row["body_json"] = json.dumps(body, ensure_ascii=False)
        rows.append(row)
    return rows


def prefix_key(body: dict[str, Any]) -> str:
    """What a request's prompt starts with, as text that sorts requests sharing a prefix together."""
    parts = [body.get(name) for name in ("instructions", "messages", "prompt", "input") if body.get(name) is not None]
    return json.dumps(parts, ensure_ascii=False)


class EngineAsker:
    """map_batches callable: send the batch's pending rows to their engine actors, fill in the answers.

    An engine that is restarting (the watchdog killed it, or it died) is waited for up to
    ``patience`` seconds and the rows are sent again; only then do they come back as
    retryable 503 lines, so an engine restart costs the lines no retry of their own.
    """

    def __init__(self, patience: float) -> None:
        self.patience = patience

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        columns = {name: list(values) for name, values in batch.items()}
        pending: dict[str, list[int]] = {}
        for i, status in enumerate(columns["status"]):
            if int(status) == 0:
                pending.setdefault(columns["engine"][i], []).append(i)
        for name, idx in pending.items():
            answers = self._ask(name, [(columns["url"][i], columns["body_json"][i]) for i in idx])
            for i, answer in zip(idx, answers, strict=True):
                for key, value in answer.items():
                    columns[key][i] = value
        return columns

    def _ask(self, name: str, requests: list[tuple[str, str]]) -> list[dict[str, Any]]:
        import ray

        deadline = time.monotonic() + self.patience
        while True:
            try:
                return ray.get(ray.get_actor(name).answer.remote(requests))
            except (ray.exceptions.RayError, ValueError):  # died, restarting, or not registered again yet
                if time.monotonic() >= deadline:
                    return [RESTARTED_ANSWER] * len(requests)
                time.sleep(1.0)


RESTARTED_ANSWER = {
    "status": 503,
    "body_json": json.dumps(openai_error(RESTARTED, type_="server_error", code="engine_restarted")),
    "prompt_tokens": 0,
    "completion_tokens": 0,
}
