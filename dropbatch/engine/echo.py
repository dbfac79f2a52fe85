"""A light, in-process engine for fast unit tests of the runner and finalization.

It reads chunks and shapes results with the same code as the real engine
(``rows.py``) and fakes only the model: the "completion" is the prompt's words
reversed. Never the default, never what the demo runs, never end-to-end proof.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dropbatch.engine.base import LineResult, WorkChunk
from dropbatch.engine.rows import LineAssembler, read_chunk, request_rows
from dropbatch.settings import Settings
from dropbatch.storage.base import ObjectStore


class EchoEngine:
    def __init__(
        self,
        store: ObjectStore,
        settings: Settings,
        *,
        fail: Callable[[dict[str, Any]], str | None] = lambda row: None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.fail = fail
        self.runs: list[int] = []  # lines per run, so tests can see coalescing

    def __enter__(self) -> EchoEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]:
        self.runs.append(sum(c.answers for c in chunks))
        assembler = LineAssembler({(c.batch_id, c.chunk): c for c in chunks})
        limit = self.settings.engine.max_model_len or 1_000_000
        for chunk in chunks:
            data = read_chunk(chunk, self.store)
            for row in request_rows(chunk, data, self.settings.engine, max_line_bytes=self.settings.limits.max_line_bytes):
                result = assembler.add(self._answer(row, limit))
                if result is not None:
                    yield result

    def _answer(self, row: dict[str, Any], limit: int) -> dict[str, Any]:
        messages = json.loads(row["messages_json"]) if row.get("messages_json") else []
        prompt = row["prompt"] or "\n".join(m["content"] for m in messages)
        words = prompt.split()
        out = {**row, "num_input_tokens": len(words), "__inference_error__": ""}
        failure = self.fail(row)
        if failure:
            return {**out, "__inference_error__": failure}
        if len(words) > limit:
            return {
                **out,
                "__inference_error__": f"ValueError: The decoder prompt (length {len(words)}) is longer than "
                f"the maximum model length of {limit}.",
            }
        if "sampling_params" not in row:
            return {**out, "embeddings": [float(len(prompt)), float(len(words)), 1.0]}
        budget = int(row["max_tokens"])
        reply = list(reversed(words))[:budget]
        return {**out, "generated_text": " ".join(reply), "num_generated_tokens": len(reply)}
