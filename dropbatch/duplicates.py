"""Identical deterministic requests of one batch: computed once, the answer copied to the others.

A request is deterministic when its answer does not depend on sampling: every
embeddings request, and a generation with ``temperature`` 0 or a fixed ``seed``.
OpenAI's default temperature is 1, so a body without one is sampled and never
deduplicated. Two lines are duplicates when their bodies are equal as JSON (key
order aside); the first is the original, the later ones its copies.

The watcher finds them while it reads every line at admission and writes the map
(``work/<batch>/duplicates.json``); the runner sends only the originals to the
engine and finalization writes each copy from its original's result, with the
copy's own custom_id and ids. Never across batches, so never across tenants.
A copy costs no quota: the hourly quota counts engine work, and a copy is none
(``DuplicateFinder.saved_requests``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from dropbatch.ids import completion_id, request_line_id, response_request_id, tool_call_id
from dropbatch.records import Records
from dropbatch.storage.keys import ControlKeys

_BODY_ID = re.compile(r"^(.+?)([-_])[0-9a-f]{24}$")  # chatcmpl-…, cmpl-…, embd-…, resp_… (dropbatch.ids)


def is_deterministic(endpoint: str, body: dict[str, Any]) -> bool:
    """Same body, same answer: embeddings, or a generation at temperature 0 or with a fixed seed."""
    if endpoint == "/v1/embeddings":
        return True
    return body.get("temperature", 1) == 0 or body.get("seed") is not None


def request_key(body: dict[str, Any]) -> bytes:
    """What makes two request lines the same request (the endpoint and model are the batch's)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


class ChunkDuplicates(BaseModel):
    """One chunk's lines for the engine (``keep``) and its copies (copy custom_id → original custom_id)."""

    keep: list[str] = Field(default_factory=list)
    copies: dict[str, str] = Field(default_factory=dict)


class Duplicates(BaseModel):
    """A batch's duplicate lines by chunk; only chunks holding a copy are listed."""

    chunks: dict[int, ChunkDuplicates] = Field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(c.copies) for c in self.chunks.values())

    def copy_counts(self) -> Counter[str]:
        """Original custom_id → how many copies its answer makes."""
        return Counter(original for c in self.chunks.values() for original in c.copies.values())


class DuplicateFinder:
    """Streams past a batch's lines (in order) and collects its duplicates.

    Memory: one digest per distinct deterministic request, plus the custom_ids of
    the chunk being read and of chunks holding a copy.
    """

    def __init__(self, endpoint: str, *, enabled: bool = True) -> None:
        self.endpoint = endpoint
        self.enabled = enabled  # off: only tell whether the batch is sampled
        self.sampled = False  # some line is sampled: the batch's answers are not a function of its bytes
        self._first: dict[bytes, str] = {}
        self._chunks: dict[int, ChunkDuplicates] = {}
        self._current = -1
        self._copy_cost: dict[str, int] = {}  # copy custom_id → the requests it would have cost
        self._saved = 0  # their sum, kept as lines are added: the watcher weighs it against the quota per line

    def add(self, chunk: int, custom_id: str, body: dict[str, Any], cost: int = 1) -> None:
        """Note a valid line of ``chunk``; ``cost`` is what it counts against the quota."""
        if not self.enabled:
            self.sampled = self.sampled or not is_deterministic(self.endpoint, body)
            return
        if chunk != self._current:
            self._drop_if_no_copies(self._current)
            self._current = chunk
        here = self._chunks.setdefault(chunk, ChunkDuplicates())
        if not is_deterministic(self.endpoint, body):
            self.sampled = True
            here.keep.append(custom_id)
            return
        original = self._first.setdefault(request_key(body), custom_id)
        if original == custom_id:
            here.keep.append(custom_id)
        else:
            here.copies[custom_id] = original
            self._copy_cost[custom_id] = cost
            self._saved += cost

    @property
    def saved_requests(self) -> int:
        """Quota requests the copies do not cost (final once ``result()`` has run, never more before)."""
        return self._saved

    def _drop_if_no_copies(self, chunk: int) -> None:
        if chunk in self._chunks and not self._chunks[chunk].copies:
            del self._chunks[chunk]

    def result(self) -> Duplicates:
        self._drop_if_no_copies(self._current)
        for found in self._chunks.values():
            if not found.keep:
                # The engine runs every line of a chunk with none selected: compute one copy anyway.
                first = next(iter(found.copies))
                del found.copies[first]
                self._saved -= self._copy_cost.pop(first)
                found.keep.append(first)
        return Duplicates(chunks={i: c for i, c in self._chunks.items() if c.copies})


def save_duplicates(records: Records, batch_id: str, duplicates: Duplicates) -> None:
    records.put(ControlKeys.duplicates(batch_id), duplicates)


def load_duplicates(records: Records, batch_id: str, count: int) -> Duplicates:
    """The batch's map (empty when admission found no duplicates, ``count`` 0)."""
    if not count:
        return Duplicates()
    return records.get(ControlKeys.duplicates(batch_id), Duplicates) or Duplicates()


def copy_result(line: dict[str, Any], custom_id: str, content_sha256: str) -> dict[str, Any]:
    """The original's result line as the copy ``custom_id``'s own: same answer, its own ids."""
    out = copy.deepcopy(line)
    out["id"] = request_line_id(content_sha256, custom_id)
    out["custom_id"] = custom_id
    response = out.get("response")
    if response is None:
        return out
    response["request_id"] = response_request_id(content_sha256, custom_id)
    body = response.get("body")
    if not isinstance(body, dict):
        return out
    match = _BODY_ID.fullmatch(str(body.get("id", "")))
    if match:
        body["id"] = completion_id(content_sha256, custom_id, match[1], match[2])
    for c, choice in enumerate(body.get("choices") or ()):
        for i, call in enumerate((choice.get("message") or {}).get("tool_calls") or ()):
            call["id"] = tool_call_id(content_sha256, custom_id, c, i)
    return out
