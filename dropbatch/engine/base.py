"""The engine seam: chunks of admitted input in, one OpenAI result line per custom_id out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkChunk:
    """A byte range of whole lines in one input object of one batch.

    Everything a Ray worker needs to read, run and answer these lines, so it can
    be shipped to any node as plain data.
    """

    batch_id: str
    chunk: int
    content_sha256: str
    endpoint: str
    model: str
    bucket: str
    key: str
    start: int
    end: int
    first_line: int
    lines: int
    sha256: str
    created: int
    prompt_chars: int = 0
    max_tokens: int = 0
    only: tuple[str, ...] = ()  # when set, just these custom_ids (a retry pass, or the originals of duplicates)
    # vLLM priority of the chunk's lines (lower first; runner/schedule.py): line i of the pass gets
    # ``priority + i * priority_step``, or ``urgent_priority`` once the clock reaches ``urgent_at``.
    # All zero: the lines carry no priority (vLLM's first come, first served).
    priority: int = 0
    priority_step: int = 0
    urgent_at: float = 0.0
    urgent_priority: int = 0

    @property
    def answers(self) -> int:
        """How many result lines the engine gives back for this chunk."""
        return len(self.only) or self.lines


@dataclass(frozen=True)
class LineResult:
    """The final OpenAI output or error line for one custom_id, with its token counts."""

    batch_id: str
    chunk: int
    custom_id: str
    line: dict[str, Any]
    ok: bool
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """Runs chunks of request lines; used as a context manager so start/stop are explicit.

    ``run`` yields results as they finish, in any order, exactly one per request
    line of every chunk it was given.
    """

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, chunks: Sequence[WorkChunk]) -> Iterator[LineResult]: ...
