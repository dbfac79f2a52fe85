"""OpenAI batch JSONL: streaming line splitting, request-line validation, result lines.

Input line:   {"custom_id", "method": "POST", "url", "body"}
Result line:  {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
               "error": {"code", "message"} | null}
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbatch.bodies import BodyLimits, check_body, request_cost
from dropbatch.errors import InvalidRequest
from dropbatch.ids import request_line_id, response_request_id
from dropbatch.models import ENDPOINTS

MAX_CUSTOM_ID_LENGTH = 512
LINE_FIELDS = ("custom_id", "method", "url", "body")
# Files saved as "UTF-8 with BOM" (Notepad, PowerShell) start with it: not part of line 1's JSON.
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class RawLine:
    """One line of an input object: its 1-based number, byte offset, length and bytes.

    ``data`` is None when the line was longer than the limit: it was skipped
    without ever being held whole in memory.
    """

    number: int
    offset: int
    length: int
    data: bytes | None


def iter_lines(
    chunks: Iterable[bytes], *, max_line_bytes: int, start_offset: int = 0, first_number: int = 1
) -> Iterator[RawLine]:
    """Split a byte stream into lines (``\\n``, with or without a final newline).

    Blank lines are skipped but counted, as editors and OpenAI count them; a UTF-8 byte
    order mark at offset 0 is dropped from the first line's bytes. Memory is bounded by
    ``max_line_bytes`` plus one chunk, however large the object.
    """
    lines = LineSplitter(max_line_bytes=max_line_bytes, start_offset=start_offset, first_number=first_number)
    for chunk in chunks:
        yield from lines.feed(chunk)
    yield from lines.end()


async def aiter_lines(chunks: AsyncIterable[bytes], *, max_line_bytes: int) -> AsyncIterator[RawLine]:
    """``iter_lines`` over chunks that are awaited (an ``AsyncObjectStore.iter_bytes``)."""
    lines = LineSplitter(max_line_bytes=max_line_bytes)
    async for chunk in chunks:
        for line in lines.feed(chunk):
            yield line
    for line in lines.end():
        yield line


class LineSplitter:
    """The line splitting of ``iter_lines``, fed one chunk at a time (so sync and async streams share it).

    Each ``feed`` must be read to its end before the next chunk is fed.
    """

    def __init__(self, *, max_line_bytes: int, start_offset: int = 0, first_number: int = 1) -> None:
        self.max_line_bytes = max_line_bytes
        self.buffer = bytearray()
        self.overflow = False  # the current line passed the limit; its bytes are being dropped
        self.number = first_number
        self.line_start = self.position = start_offset  # position: offset of the current chunk

    def feed(self, chunk: bytes) -> Iterator[RawLine]:
        """The lines ``chunk`` completes."""
        buffer, limit = self.buffer, self.max_line_bytes
        overflow, number, line_start, position = self.overflow, self.number, self.line_start, self.position
        pos = 0
        while True:
            newline = chunk.find(b"\n", pos)
            end = len(chunk) if newline < 0 else newline
            if not overflow:
                if len(buffer) + end - pos > limit:
                    overflow = True
                    buffer.clear()
                else:
                    buffer += chunk[pos:end]
            if newline < 0:
                break
            line_end = position + newline
            if line_start == 0 and buffer.startswith(BOM):
                del buffer[: len(BOM)]
            if overflow or buffer.strip():
                yield RawLine(number, line_start, line_end - line_start, None if overflow else bytes(buffer))
            number += 1
            buffer.clear()
            overflow = False
            line_start = line_end + 1
            pos = newline + 1
        self.overflow, self.number, self.line_start, self.position = overflow, number, line_start, position + len(chunk)

    def end(self) -> Iterator[RawLine]:
        """The last line, when the stream does not end with a newline."""
        if self.line_start == 0 and self.buffer.startswith(BOM):
            del self.buffer[: len(BOM)]
        if self.overflow or self.buffer.strip():
            data = None if self.overflow else bytes(self.buffer)
            yield RawLine(self.number, self.line_start, self.position - self.line_start, data)


@dataclass(frozen=True)
class RequestLine:
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]
    line: int
    cost: int = 1  # what the engine does for it: embedding inputs or choices; the quota counts this


def parse_request_line(
    raw: RawLine, *, endpoint: str, model: str, limits: BodyLimits | None = None
) -> RequestLine:
    """Validate one input line as OpenAI does; raises ``InvalidRequest`` naming the line and the field.

    ``limits`` bounds what depends on the deployment (max_tokens within the model's context).
    """
    n = raw.number

    def bad(code: str, message: str, param: str | None = None) -> InvalidRequest:
        return InvalidRequest(message, code=code, param=param, line=n)

    if raw.data is None:
        raise bad("line_too_long", f"Line {n} is longer than the maximum line size.")
    try:
        obj = json.loads(raw.data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("invalid_json_line", f"Line {n} is not valid UTF-8 JSON.") from None
    if b"\\u" in raw.data and not is_unicode_text(obj):
        raise bad(
            "invalid_json_line",
            f"Line {n} escapes an unpaired UTF-16 surrogate (\\ud800-\\udfff): not valid Unicode text.",
        )
    if not isinstance(obj, dict):
        raise bad("invalid_json_line", f"Line {n} must be a JSON object.")
    for name in LINE_FIELDS:
        if name not in obj:
            raise bad("missing_required_parameter", f"Line {n} is missing required parameter '{name}'.", name)
    for name in obj:
        if name not in LINE_FIELDS:  # refused, not dropped: a request field belongs in body
            raise bad("unknown_parameter", f"Line {n}: {name!r} is not a field of a request line "
                      f"({', '.join(LINE_FIELDS)}); request parameters go in body.", name)
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID_LENGTH:
        raise bad(
            "invalid_custom_id",
            f"Line {n}: custom_id must be a non-empty string of at most {MAX_CUSTOM_ID_LENGTH} characters.",
            "custom_id",
        )
    if obj["method"] != "POST":
        raise bad("invalid_method", f"Line {n}: method must be 'POST'.", "method")
    url = obj["url"]
    if url not in ENDPOINTS:
        raise bad("invalid_url", f"Line {n}: url must be one of {', '.join(ENDPOINTS)}.", "url")
    if url != endpoint:
        raise bad(
            "mismatched_endpoint",
            f"Line {n}: url {url!r} does not match the batch endpoint {endpoint!r}.",
            "url",
        )
    body = obj["body"]
    if not isinstance(body, dict):
        raise bad("invalid_body", f"Line {n}: body must be a JSON object.", "body")
    if body.get("model") != model:
        raise bad(
            "mismatched_model",
            f"Line {n}: body.model {body.get('model')!r} does not match the batch model {model!r}; "
            "a batch uses one model.",
            "body.model",
        )
    try:
        check_body(body, endpoint, limits or BodyLimits())
    except InvalidRequest as exc:
        raise bad(exc.code, f"Line {n}: {exc.message}", exc.param) from None
    return RequestLine(custom_id=custom_id, method="POST", url=url, body=body, line=n, cost=request_cost(body, endpoint))


def file_errors(
    paths: Sequence[Path], *, endpoint: str, model: str, max_line_bytes: int, most: int = 5
) -> list[InvalidRequest]:
    """The first ``most`` lines of local input files that admission would refuse, as the watcher words them.

    What ``dropbatch manifest sign`` and ``submit`` check before anything is signed or
    uploaded: each line's shape and fields (``parse_request_line``), repeated custom_ids, no lines.
    What depends on the deployment (the model's context, quotas) is left to admission.
    """
    errors: list[InvalidRequest] = []
    seen: set[str] = set()
    lines = 0
    for path in paths:
        where = f"{path.name}: " if len(paths) > 1 else ""
        with path.open("rb") as f:
            for raw in iter_lines(iter(lambda: f.read(1 << 20), b""), max_line_bytes=max_line_bytes):
                lines += 1
                try:
                    request = parse_request_line(raw, endpoint=endpoint, model=model)
                except InvalidRequest as exc:
                    errors.append(InvalidRequest(where + exc.message, code=exc.code, param=exc.param, line=exc.line))
                else:
                    if request.custom_id in seen:
                        errors.append(InvalidRequest(
                            f"{where}Line {raw.number}: custom_id {request.custom_id!r} appears more than once.",
                            code="duplicate_custom_id", param="custom_id", line=raw.number,
                        ))
                    seen.add(request.custom_id)
                if len(errors) >= most:
                    return errors
    if not lines:
        errors.append(InvalidRequest("The input has no request lines.", code="empty_file"))
    return errors


def first_url(lines: Iterable[RawLine]) -> str | None:
    """The ``url`` of the first line that names one as a string: a file's endpoint, to check every line against."""
    return _first_string(lines, lambda obj: obj.get("url"))


def first_model(lines: Iterable[RawLine]) -> str | None:
    """``body.model`` of the first line that names one as a string: the model a file's batch runs on."""
    return _first_string(lines, lambda obj: obj["body"].get("model") if isinstance(obj.get("body"), dict) else None)


def _first_string(lines: Iterable[RawLine], pick: Any) -> str | None:
    for raw in lines:
        try:
            obj = json.loads(raw.data or b"")
        except (ValueError, RecursionError):
            continue
        value = pick(obj) if isinstance(obj, dict) else None
        if isinstance(value, str):
            return value
    return None


def is_unicode_text(value: Any) -> bool:
    """False if a decoded JSON value holds a lone surrogate (valid as a JSON escape, unwritable as UTF-8)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def result_line(content_sha256: str, custom_id: str, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """A line for the output file (2xx) or, with a 4xx/5xx ``status_code``, the error file."""
    return {
        "id": request_line_id(content_sha256, custom_id),
        "custom_id": custom_id,
        "response": {
            "status_code": status_code,
            "request_id": response_request_id(content_sha256, custom_id),
            "body": body,
        },
        "error": None,
    }


def error_line(content_sha256: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A line for the error file when no response exists (expired, cancelled, failed after retries)."""
    return {
        "id": request_line_id(content_sha256, custom_id),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def is_success(line: dict[str, Any]) -> bool:
    response = line.get("response")
    return line.get("error") is None and response is not None and 200 <= response["status_code"] < 300


def encode(line: dict[str, Any]) -> bytes:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
