"""A 20 MB input is admitted as a stream: bounded memory, and a chunk plan that tiles the object."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
from helpers import make_line, make_tenant

from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.integration

TARGET_BYTES = 20 * 1024 * 1024
WORDS_PER_PROMPT = 80  # ~900-byte lines: 20 MB is ~23,000 lines, under the 50,000-line limit


def write_large_jsonl(path, target_bytes: int) -> int:
    """Write valid chat lines until the file reaches ``target_bytes``; returns the line count."""
    lines = size = 0
    with path.open("w", encoding="utf-8") as f:
        while size < target_bytes:
            text = " ".join(f"t{lines}w{j}" for j in range(WORDS_PER_PROMPT))
            row = json.dumps(make_line(f"req-{lines}", text=text), separators=(",", ":")) + "\n"
            f.write(row)
            size += len(row)
            lines += 1
    return lines


@pytest.fixture
def large_jsonl(tmp_path):
    """A ~20 MB JSONL file and its line count; removed afterwards so kept tmp dirs stay small."""
    path = tmp_path / "large.jsonl"
    yield path, write_large_jsonl(path, TARGET_BYTES)
    path.unlink()


@pytest.mark.parametrize(
    "chunk_lines",
    [
        pytest.param("500", id="default-chunks"),
        pytest.param("50000", id="8MiB-chunks"),
    ],
)
def test_20mb_input_is_admitted_streaming(chunk_lines, make_settings, make_context, drop_job, large_jsonl):
    # 8MiB-chunks: lines never close a chunk, so the 8 MiB byte bound cuts them.
    settings = make_settings(DROPBATCH_TIER_QUOTAS="basic=50000", DROPBATCH_CHUNK_LINES=chunk_lines)
    ctx = make_context(settings)
    _, key = make_tenant(ctx, "acme")
    path, lines = large_jsonl
    size = path.stat().st_size
    assert lines <= settings.limits.max_file_lines

    ref = drop_job(ctx, key, path)
    info = ctx.store.head(ctx.inbox, f"{ref.tenant}/{ref.job}/input.jsonl")
    assert info.size == size
    assert "-" in info.etag.strip('"')  # `aws s3 cp` sent it as a multipart upload

    watcher = Watcher(ctx)
    tracemalloc.start()
    try:
        assert watcher.handle(ref.manifest_key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.IN_PROGRESS, record.errors
    assert record.request_counts.total == lines
    # Chunk buffers are bounded (8 MiB + one 1 MiB read at most); nothing holds the file.
    assert peak < size / 2, f"peak Python allocation {peak} B while admitting a {size} B input"

    chunks = sorted(record.chunks, key=lambda c: c.index)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert {c.input for c in chunks} == {0}
    assert chunks[0].start == 0 and chunks[-1].end == size
    assert all(prev.end == nxt.start for prev, nxt in zip(chunks, chunks[1:], strict=False))
    assert sum(c.lines for c in chunks) == lines
    assert all(prev.first_line + prev.lines == nxt.first_line for prev, nxt in zip(chunks, chunks[1:], strict=False))
    with path.open("rb") as f:
        for chunk in chunks:
            assert hashlib.sha256(f.read(chunk.end - chunk.start)).hexdigest() == chunk.sha256
