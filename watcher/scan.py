"""One streaming pass over a job's inputs: verify bytes, validate lines, cut chunks.

Memory is bounded by one chunk (``CHUNK_MAX_BYTES`` plus one line) however large
the input: bytes are hashed as they stream past, and only the current chunk's
bytes are kept, to hash it separately for the runner's own integrity check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from dropbatch.auth.quota import QuotaBudget
from dropbatch.bodies import BodyLimits
from dropbatch.duplicates import DuplicateFinder, Duplicates
from dropbatch.errors import InvalidRequest, ManifestRejected, ObjectNotFound
from dropbatch.jsonl import iter_lines, parse_request_line
from dropbatch.models import BatchError, Chunk, InputObject
from dropbatch.settings import LimitSettings
from dropbatch.storage.base import ObjectStore

CHUNK_MAX_BYTES = 8 * 1024 * 1024
MAX_LISTED_ERRORS = 100


@dataclass
class ScanResult:
    lines: int = 0
    requests: int = 0  # what the quota counts: embedding inputs and choices of the valid lines the engine runs
    chunks: list[Chunk] = field(default_factory=list)
    etags: list[str] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)
    error_count: int = 0
    duplicates: Duplicates = field(default_factory=Duplicates)
    sampled: bool = False  # some line is sampled (temperature > 0, no seed): its answers are not reproducible

    def add_error(self, error: BatchError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(error)


class _ChunkCutter:
    """Cuts chunks at line starts and hashes each chunk's bytes as they stream past.

    ``pending`` holds only bytes read but not yet hashed: at most one line plus one
    read from S3, whatever the chunk size.
    """

    def __init__(self, input_index: int, limits: LimitSettings, out: list[Chunk]) -> None:
        self.input_index = input_index
        self.limits = limits
        self.out = out
        self.pending = bytearray()
        self.hashed = 0  # object offset up to which bytes went into ``hasher``
        self.hasher = hashlib.sha256()
        self.start = 0
        self.first_line = 1
        self.lines = 0
        self.prompt_chars = 0
        self.max_tokens = 0

    def add_stats(self, prompt_chars: int, max_tokens: int) -> None:
        self.prompt_chars += prompt_chars
        self.max_tokens = max(self.max_tokens, max_tokens)

    def feed(self, source: Iterator[bytes]) -> Iterator[bytes]:
        for data in source:
            self.pending += data
            yield data

    def _hash_to(self, offset: int) -> None:
        n = offset - self.hashed
        if n > 0:
            with memoryview(self.pending) as view:
                self.hasher.update(view[:n])
            del self.pending[:n]
            self.hashed = offset

    def before_line(self, offset: int, number: int) -> None:
        """Called for each request line; closes the current chunk first if it is full."""
        full = self.lines >= self.limits.chunk_lines or offset - self.start >= CHUNK_MAX_BYTES
        if self.lines and full:
            self.close(offset)
            self.first_line = number
        else:
            self._hash_to(offset)
        self.lines += 1

    def close(self, end: int) -> None:
        self._hash_to(end)
        digest = self.hasher.hexdigest()
        self.hasher = hashlib.sha256()
        if self.lines:
            self.out.append(
                Chunk(
                    index=len(self.out),
                    input=self.input_index,
                    start=self.start,
                    end=end,
                    first_line=self.first_line,
                    lines=self.lines,
                    sha256=digest,
                    prompt_chars=self.prompt_chars,
                    max_tokens=self.max_tokens,
                )
            )
        self.start = end
        self.lines = 0
        self.prompt_chars = 0
        self.max_tokens = 0


def request_size(body: dict, endpoint: str, default_max_tokens: int) -> tuple[int, int]:
    """(prompt characters, max new tokens) of one valid request body, for planning."""
    if endpoint == "/v1/chat/completions":
        chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
    elif endpoint == "/v1/completions":
        chars = len(str(body["prompt"]))
    elif endpoint == "/v1/responses":
        chars = len(str(body["input"])) + len(body.get("instructions") or "")
    else:
        value = body["input"]
        return (len(value) if isinstance(value, str) else sum(len(v) if isinstance(v, (str, list)) else 1 for v in value)), 0
    new = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens") or default_max_tokens
    return chars, int(new)


class _Counted:
    """Hashes and counts bytes as they stream past."""

    def __init__(self, source: Iterator[bytes], hasher) -> None:
        self.source = source
        self.hasher = hasher
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for data in self.source:
            self.hasher.update(data)
            self.size += len(data)
            yield data


def _size_mismatch(item: InputObject, size: int, *, streamed: bool) -> ManifestRejected:
    """``size``: what HEAD said, or what the ranged read got (at most one byte past the declared size)."""
    if streamed and size > item.size:
        found = f"holds more than the {item.size} bytes the manifest declares (reading stopped there)"
    else:
        found = f"is {size} bytes but the manifest declares {item.size}"
    return ManifestRejected(f"Input {item.key} {found}: it changed after signing.", code="input_mismatch", param="size")


def scan_inputs(
    store: ObjectStore,
    bucket: str,
    inputs: list[InputObject],
    *,
    endpoint: str,
    model: str,
    limits: LimitSettings,
    default_max_tokens: int = 256,
    body_limits: BodyLimits | None = None,
    dedup: bool = True,
    budget: QuotaBudget | None = None,
) -> ScanResult:
    """Check every input against the manifest and every line against OpenAI's rules.

    Raises ``ManifestRejected`` when an input's bytes are not the ones signed for;
    line problems are collected in the result (the batch then fails validation).
    With a ``budget``, raises ``QuotaExceeded`` at the first line that takes the batch
    past it, reading no further (copies of earlier lines cost nothing, so the count
    so far never exceeds the batch's final one).
    """
    total = sum(item.size for item in inputs)
    if total > limits.max_file_bytes:
        raise InvalidRequest(
            f"The input is {total} bytes; at most {limits.max_file_bytes} are allowed.", code="file_too_large"
        )
    result = ScanResult()
    seen: set[str] = set()
    finder = DuplicateFinder(endpoint, enabled=dedup)
    for index, item in enumerate(inputs):
        hasher = hashlib.sha256()
        cutter = _ChunkCutter(index, limits, result.chunks)
        try:
            info = store.head(bucket, item.key)
        except ObjectNotFound:
            raise ManifestRejected(f"Input {item.key} does not exist in the inbox.", code="missing_input") from None
        if info.size != item.size:
            raise _size_mismatch(item, info.size, streamed=False)
        result.etags.append(info.etag)

        # One byte past the declared size at most: an object that grew after the HEAD
        # is caught without streaming the rest of it.
        counter = _Counted(store.iter_bytes(bucket, item.key, end=item.size + 1), hasher)
        stream = cutter.feed(iter(counter))
        for raw in iter_lines(stream, max_line_bytes=limits.max_line_bytes):
            cutter.before_line(raw.offset, raw.number)
            result.lines += 1
            if result.lines == limits.max_file_lines + 1:
                result.add_error(
                    BatchError(
                        code="too_many_requests",
                        message=f"A batch may hold at most {limits.max_file_lines} requests.",
                        line=raw.number,
                    )
                )
            try:
                request = parse_request_line(raw, endpoint=endpoint, model=model, limits=body_limits)
            except InvalidRequest as exc:
                result.add_error(BatchError(code=exc.code, message=exc.message, line=exc.line, param=exc.param))
                continue
            cutter.add_stats(*request_size(request.body, endpoint, default_max_tokens))
            result.requests += request.cost
            if request.custom_id in seen:
                result.add_error(
                    BatchError(
                        code="duplicate_custom_id",
                        message=f"Line {raw.number}: custom_id {request.custom_id!r} appears more than once.",
                        line=raw.number,
                        param="custom_id",
                    )
                )
            seen.add(request.custom_id)
            finder.add(len(result.chunks), request.custom_id, request.body, request.cost)
            if budget is not None and result.requests - finder.saved_requests > budget.left:
                raise budget.refusal(result.requests - finder.saved_requests, result.lines)
            # Bound memory: once too many lines, keep hashing but stop remembering ids.
            if len(seen) > limits.max_file_lines:
                seen.clear()
        size = counter.size
        cutter.close(size)
        if size != item.size:
            raise _size_mismatch(item, size, streamed=True)
        if hasher.hexdigest() != item.sha256:
            raise ManifestRejected(
                f"Input {item.key} does not match the manifest: its sha256 differs, so it changed after signing.",
                code="input_mismatch",
            )
    if result.lines == 0:
        result.add_error(BatchError(code="empty_file", message="The input has no request lines."))
    result.sampled = finder.sampled
    if not result.errors:
        result.duplicates = finder.result()
        result.requests -= finder.saved_requests  # computed once: a copy is no engine work
    return result
