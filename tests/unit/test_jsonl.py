"""Streaming line splitting and OpenAI request-line validation."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dropbatch.errors import InvalidRequest
from dropbatch.ids import request_line_id, response_request_id
from dropbatch.jsonl import (
    BOM,
    MAX_CUSTOM_ID_LENGTH,
    RawLine,
    aiter_lines,
    encode,
    error_line,
    is_success,
    iter_lines,
    parse_request_line,
    result_line,
)

CHAT = "/v1/chat/completions"
MODEL = "dropbatch-tiny"


def split_into(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def expected_lines(data: bytes, max_line_bytes: int, start_offset: int = 0) -> list[RawLine]:
    out, offset = [], 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        text = line.removeprefix(BOM) if start_offset + offset == 0 else line  # a file's byte order mark
        if len(line) > max_line_bytes:
            out.append(RawLine(number, offset, len(line), None))
        elif text.strip():
            out.append(RawLine(number, offset, len(line), text))
        offset += len(line) + 1
    return out


_BYTES = st.binary(max_size=400) | st.lists(
    st.sampled_from([b"\n", b" ", b"\t", b"{}", b"abc", b"\r\n", b"x" * 7, b"\xff", BOM]), max_size=60
).map(b"".join)


@settings(max_examples=400, deadline=None, database=None)
@given(data=_BYTES, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_iter_lines_matches_split(data: bytes, cuts: list[int]) -> None:
    chunks = split_into(data, cuts)
    assert b"".join(chunks) == data
    lines = list(iter_lines(chunks, max_line_bytes=1 << 20))
    assert lines == expected_lines(data, 1 << 20)
    for line in lines:
        raw = data[line.offset : line.offset + line.length]
        assert (raw.removeprefix(BOM) if line.offset == 0 else raw) == line.data


@settings(max_examples=300, deadline=None, database=None)
@given(
    data=_BYTES,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    limit=st.integers(min_value=0, max_value=12),
)
def test_iter_lines_drops_overlong_lines(data: bytes, cuts: list[int], limit: int) -> None:
    lines = list(iter_lines(split_into(data, cuts), max_line_bytes=limit))
    assert lines == expected_lines(data, limit)
    for line in lines:
        assert line.data is None or len(line.data) <= limit


@settings(max_examples=200, deadline=None, database=None)
@given(
    data=_BYTES,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    limit=st.integers(min_value=0, max_value=12),
)
def test_aiter_lines_splits_awaited_chunks_as_iter_lines_does(data: bytes, cuts: list[int], limit: int) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in split_into(data, cuts):
            yield chunk

    async def lines() -> list[RawLine]:
        return [line async for line in aiter_lines(chunks(), max_line_bytes=limit)]

    assert asyncio.run(lines()) == expected_lines(data, limit)


@settings(max_examples=100, deadline=None, database=None)
@given(data=_BYTES, start=st.integers(min_value=0, max_value=10**9), first=st.integers(min_value=1, max_value=10**6))
def test_iter_lines_offsets_and_numbers_shift(data: bytes, start: int, first: int) -> None:
    base = expected_lines(data, 100, start)
    shifted = list(iter_lines([data], max_line_bytes=100, start_offset=start, first_number=first))
    assert shifted == [RawLine(r.number + first - 1, r.offset + start, r.length, r.data) for r in base]


def test_iter_lines_examples() -> None:
    data = b'a\n\n  \nbb\r\nccc'
    assert list(iter_lines([data], max_line_bytes=10)) == [
        RawLine(1, 0, 1, b"a"),
        RawLine(4, 6, 3, b"bb\r"),
        RawLine(5, 10, 3, b"ccc"),
    ]
    assert list(iter_lines([], max_line_bytes=10)) == []
    assert list(iter_lines([b"", b"\n\n", b""], max_line_bytes=10)) == []


def test_a_file_saved_with_a_byte_order_mark_parses_as_without_it() -> None:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]}} for i in range(2)]
    data = BOM + "\r\n".join(json.dumps(line) for line in lines).encode() + b"\r\n"
    for chunks in ([data], [data[:1], data[1:2], data[2:]]):
        parsed = [parse_request_line(raw, endpoint=CHAT, model=MODEL) for raw in iter_lines(chunks, max_line_bytes=4096)]
        assert [p.body for p in parsed] == [line["body"] for line in lines]
    assert [r.offset for r in iter_lines([data], max_line_bytes=4096)][0] == 0  # offsets stay the object's
    later = list(iter_lines([BOM + b"{}"], max_line_bytes=100, start_offset=7))  # only at the start of the file
    assert later[0].data == BOM + b"{}"


def test_overlong_line_is_never_held_whole() -> None:
    piece = b"y" * 65536
    size = 24 * 1024 * 1024

    def stream() -> Iterator[bytes]:
        yield b'{"short": 1}\n'
        for _ in range(size // len(piece)):
            yield piece
        yield b'\n{"after": 2}\n'

    tracemalloc.start()
    try:
        lines = [(r.number, r.length, r.data) for r in iter_lines(stream(), max_line_bytes=1024)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == [(1, 12, b'{"short": 1}'), (2, size, None), (3, 12, b'{"after": 2}')]
    assert peak < 2 * 1024 * 1024  # a 24 MiB line passed through ~1 KiB of buffer


# -- parse_request_line ------------------------------------------------------------------


def raw(obj: Any, number: int = 7) -> RawLine:
    if isinstance(obj, RawLine):
        return obj
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return RawLine(number, 0, len(data), data)


def line(endpoint: str = CHAT, **overrides: Any) -> dict[str, Any]:
    bodies = {
        CHAT: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/completions": {"model": MODEL, "prompt": "hi"},
        "/v1/embeddings": {"model": MODEL, "input": "hi"},
    }
    obj: dict[str, Any] = {"custom_id": "c1", "method": "POST", "url": endpoint, "body": bodies[endpoint]}
    obj.update(overrides)
    return obj


def body(endpoint: str = CHAT, **fields: Any) -> dict[str, Any]:
    b = dict(line(endpoint)["body"])
    b.update(fields)
    return line(endpoint, body=b)


def reject(obj: Any, endpoint: str = CHAT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request_line(raw(obj), endpoint=endpoint, model=MODEL)
    assert info.value.line == 7
    return info.value


@pytest.mark.parametrize(
    "data",
    [b"{not json", b'{"a": 1', b"\xff\xfe{}", b'{"custom_id": "\xc3"}', b"[" * 100_000, b"{" * 100_000, b'"string"', b"[1, 2]", b"42", b"null"],
    ids=["garbage", "truncated", "bad-utf8-bom", "bad-utf8-inside", "deep-array", "deep-object", "string", "array", "number", "null"],
)
def test_invalid_json_line(data: bytes) -> None:
    assert reject(data).code == "invalid_json_line"


def test_overlong_raw_line_is_line_too_long() -> None:
    error = reject(RawLine(7, 0, 10**9, None))
    assert error.code == "line_too_long"


@pytest.mark.parametrize("missing", ["custom_id", "method", "url", "body"])
def test_missing_required_parameter(missing: str) -> None:
    obj = line()
    del obj[missing]
    error = reject(obj)
    assert (error.code, error.param) == ("missing_required_parameter", missing)


@pytest.mark.parametrize("extra", ["metadata", "temperature", "Body"])
def test_a_field_beside_the_four_of_a_request_line_is_refused_not_dropped(extra: str) -> None:
    error = reject({**line(), extra: 1})
    assert (error.code, error.param) == ("unknown_parameter", extra)
    assert f"Line 7: {extra!r} is not a field of a request line" in error.message


@pytest.mark.parametrize(
    "endpoint, field",
    [(CHAT, "messages"), ("/v1/completions", "prompt"), ("/v1/embeddings", "input")],
)
def test_missing_body_field(endpoint: str, field: str) -> None:
    obj = line(endpoint)
    del obj["body"][field]
    error = reject(obj, endpoint)
    assert (error.code, error.param) == ("missing_required_parameter", f"body.{field}")


@pytest.mark.parametrize("custom_id", ["", 5, None, ["a"], "x" * (MAX_CUSTOM_ID_LENGTH + 1)])
def test_invalid_custom_id(custom_id: Any) -> None:
    assert reject(line(custom_id=custom_id)).code == "invalid_custom_id"


def test_longest_custom_id_is_fine() -> None:
    request = parse_request_line(raw(line(custom_id="x" * MAX_CUSTOM_ID_LENGTH)), endpoint=CHAT, model=MODEL)
    assert len(request.custom_id) == MAX_CUSTOM_ID_LENGTH


@pytest.mark.parametrize("method", ["GET", "post", "", None])
def test_invalid_method(method: Any) -> None:
    assert reject(line(method=method)).code == "invalid_method"


@pytest.mark.parametrize("url", ["/v1/images/generations", "v1/chat/completions", "", None, "/v1/chat/completions/"])
def test_invalid_url(url: Any) -> None:
    assert reject(line(url=url)).code == "invalid_url"


def test_mismatched_endpoint() -> None:
    error = reject(line("/v1/completions"), endpoint=CHAT)
    assert (error.code, error.param) == ("mismatched_endpoint", "url")


@pytest.mark.parametrize("value", [None, [], "text", 3])
def test_body_must_be_an_object(value: Any) -> None:
    assert reject(line(body=value)).code == "invalid_body"


@pytest.mark.parametrize("model", ["gpt-4o", None, ""])
def test_mismatched_model(model: Any) -> None:
    error = reject(body(model=model))
    assert (error.code, error.param) == ("mismatched_model", "body.model")


def test_missing_model_is_mismatched() -> None:
    obj = line()
    del obj["body"]["model"]
    assert reject(obj).code == "mismatched_model"


@pytest.mark.parametrize(
    "endpoint, fields, code, param",
    [
        (CHAT, {"messages": []}, "invalid_body", "body.messages"),
        (CHAT, {"messages": "hi"}, "invalid_body", "body.messages"),
        (CHAT, {"messages": [{"content": "hi"}]}, "invalid_body", "body.messages[0].role"),
        (CHAT, {"messages": [{"role": "user"}]}, "missing_required_parameter", "body.messages[0].content"),
        (CHAT, {"messages": ["hi"]}, "invalid_body", "body.messages[0]"),
        ("/v1/completions", {"prompt": 5}, "invalid_body", "body.prompt"),
        ("/v1/completions", {"prompt": []}, "invalid_body", "body.prompt"),
        ("/v1/completions", {"suffix": "end"}, "unsupported_parameter", "body.suffix"),
        ("/v1/embeddings", {"input": ""}, "invalid_body", "body.input"),
        ("/v1/embeddings", {"input": []}, "invalid_body", "body.input"),
        ("/v1/embeddings", {"input": ["a", ""]}, "invalid_body", "body.input[1]"),
        ("/v1/embeddings", {"input": []}, "invalid_body", "body.input"),
        (CHAT, {"max_tokens": 0}, "invalid_body", "body.max_tokens"),
        (CHAT, {"max_tokens": "5"}, "invalid_body", "body.max_tokens"),
        (CHAT, {"max_tokens": True}, "invalid_body", "body.max_tokens"),
        (CHAT, {"max_completion_tokens": -1}, "invalid_body", "body.max_completion_tokens"),
        (CHAT, {"n": 129}, "invalid_body", "body.n"),
        (CHAT, {"n": 0}, "invalid_body", "body.n"),
        (CHAT, {"stream": True}, "invalid_body", "body.stream"),
        ("/v1/completions", {"stream": True}, "invalid_body", "body.stream"),
    ],
)
def test_invalid_body(endpoint: str, fields: dict[str, Any], code: str, param: str) -> None:
    error = reject(body(endpoint, **fields), endpoint)
    assert (error.code, error.param) == (code, param)
    assert error.message.startswith("Line 7: ") and param in error.message


@pytest.mark.parametrize(
    "endpoint, fields",
    [
        (CHAT, {}),
        (CHAT, {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
        (CHAT, {"max_tokens": 1, "n": 1, "stream": False, "temperature": 0}),
        (CHAT, {"max_completion_tokens": 10}),
        ("/v1/completions", {}),
        ("/v1/completions", {"prompt": ["one prompt"]}),
        ("/v1/embeddings", {}),
        ("/v1/embeddings", {"input": ["a", "b", "c"]}),
    ],
)
def test_valid_shapes(endpoint: str, fields: dict[str, Any]) -> None:
    obj = body(endpoint, **fields)
    request = parse_request_line(raw(obj, number=3), endpoint=endpoint, model=MODEL)
    assert (request.custom_id, request.method, request.url, request.line) == ("c1", "POST", endpoint, 3)
    assert request.body == obj["body"]


def test_result_and_error_lines() -> None:
    ok = result_line("abc", "c1", 200, {"object": "chat.completion"})
    assert ok["id"] == request_line_id("abc", "c1")
    assert ok["response"]["request_id"] == response_request_id("abc", "c1")
    assert is_success(ok)
    assert not is_success(result_line("abc", "c1", 400, {"error": {}}))
    failed = error_line("abc", "c2", "batch_expired", "late")
    assert failed["response"] is None and failed["error"] == {"code": "batch_expired", "message": "late"}
    assert not is_success(failed)
    encoded = encode({"custom_id": "é"})
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    assert json.loads(encoded) == {"custom_id": "é"}
