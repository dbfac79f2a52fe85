"""The gateway at scale: bounded file pages, several worker processes on one port, reads of one's own writes.

The worker test starts the real `dropbatch gateway` command with
DROPBATCH_GATEWAY_WORKERS=2 over the moto server and drives it with the OpenAI
SDK; the others use the in-thread live gateway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from helpers import make_jsonl

from dropbatch.emulator import free_port
from dropbatch.models import FileRecord
from dropbatch.settings import Settings
from gateway.files import FILES_PAGE, MAX_FILES_PAGE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_SECONDS = 60.0
WORKERS = 2


def jsonl_bytes(lines: list[dict]) -> bytes:
    import json

    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def test_files_list_defaults_to_a_bounded_page_the_sdk_iterates_past(settings, live, tenant_token, sdk) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)
    made = [
        FileRecord(
            id=f"file-{i:03d}",
            bytes=1,
            created_at=1_700_000_000 + i,
            filename=f"f{i}.jsonl",
            purpose="batch",
            status="processed",
            tenant="acme",
            bucket=settings.storage.inbox_bucket,
            key=f"acme/.files/file-{i:03d}.jsonl",
        )
        for i in range(FILES_PAGE + 3)
    ]
    for record in made:
        live.ctx.files.create(record)
    newest_first = [r.id for r in reversed(made)]

    first = client.files.list()
    assert [f.id for f in first.data] == newest_first[:FILES_PAGE] and first.has_more
    assert [f.id for f in client.files.list()] == newest_first  # the SDK follows `after` page by page
    oldest = client.files.list(order="asc", limit=2, after=made[0].id)
    assert [f.id for f in oldest.data] == [made[1].id, made[2].id] and oldest.has_more
    assert len(client.files.list(limit=MAX_FILES_PAGE).data) == len(made)
    with pytest.raises(openai.UnprocessableEntityError):
        client.files.list(limit=MAX_FILES_PAGE + 1)


def test_create_then_retrieve_and_cancel_then_retrieve_read_their_writes(live, tenant_token, sdk) -> None:
    client = sdk(live, tenant_token(live.ctx, "acme").token)

    def create_and_read(i: int) -> tuple[str, str]:
        file = client.files.create(file=(f"in-{i}.jsonl", jsonl_bytes(make_jsonl(2, prefix=f"r{i}"))), purpose="batch")
        assert client.files.retrieve(file.id).id == file.id
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        seen = client.batches.retrieve(batch.id)  # at once: never a 404
        cancelled = client.batches.cancel(batch.id)
        after = client.batches.retrieve(batch.id)
        assert batch.id in {b.id for b in client.batches.list(limit=100).data}
        return seen.status, f"{cancelled.status}/{after.status}"

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(create_and_read, range(8)))
    assert answers == [("validating", "cancelling/cancelling")] * 8


@pytest.fixture
def gateway_process(make_context, settings: Settings) -> Iterator[tuple[str, subprocess.Popen]]:
    """`dropbatch gateway` with DROPBATCH_GATEWAY_WORKERS=2 on a free port; yields (root URL, process)."""
    make_context(settings)  # the buckets exist: the gateway is healthy once it listens
    port = free_port()
    storage = settings.storage
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DROPBATCH_", "AWS_"))},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DROPBATCH_S3_ENDPOINT": storage.endpoint_url or "",
        "DROPBATCH_REGION": storage.region,
        "DROPBATCH_ACCESS_KEY_ID": storage.access_key_id or "test",
        "DROPBATCH_SECRET_ACCESS_KEY": storage.secret_access_key or "test",
        "DROPBATCH_GATEWAY_PORT": str(port),
        "DROPBATCH_GATEWAY_WORKERS": str(WORKERS),
        "DROPBATCH_GATEWAY_S3_POOL": "8",
        "DROPBATCH_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dropbatch.cli", "gateway"], env=env, cwd=REPO, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert proc.poll() is None, f"the gateway exited with code {proc.returncode}"
            try:
                if httpx.get(url + "/health", timeout=2).json()["status"] == "healthy":
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not answer /health"
            time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_several_workers_serve_one_port_and_each_reads_every_write(
    make_context, settings, gateway_process, tenant_token
) -> None:
    url, proc = gateway_process
    ctx = make_context(settings)
    token = tenant_token(ctx, "acme", tier="enterprise").token
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) >= WORKERS, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]

    def session(i: int) -> tuple[str, list[str]]:
        # A fresh client (new connections) per round spreads the calls over the workers.
        with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30) as client:
            file = client.files.create(
                file=(f"w{i}.jsonl", jsonl_bytes(make_jsonl(2, prefix=f"w{i}"))), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        statuses = []
        for _ in range(3):  # each read on a new connection, so possibly on another worker than the write
            with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30) as reader:
                statuses.append(reader.batches.retrieve(batch.id).status)
                reader.batches.list(limit=100)  # list pages keep what they read, on every worker
        with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30) as client:
            client.batches.cancel(batch.id)
        with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30) as reader:
            statuses.append(reader.batches.retrieve(batch.id).status)
        return batch.id, statuses

    with ThreadPoolExecutor(4) as pool:
        sessions = list(pool.map(session, range(6)))
    assert [statuses for _, statuses in sessions] == [["validating"] * 3 + ["cancelling"]] * 6

    # A list page, whichever worker serves it, shows what was written through any worker within the
    # page cache's 1 s (counted from when the reads it keeps were sent).
    time.sleep(1.5)
    for _ in range(6):
        with openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=30) as reader:
            listed = {b.id: b.status for b in reader.batches.list(limit=100).data}
        assert listed == {batch_id: "cancelling" for batch_id, _ in sessions}
    assert all(worker.is_running() for worker in workers)  # no worker died serving
    proc.terminate()
    assert proc.wait(timeout=30) == 0  # SIGTERM stops the supervisor and its workers cleanly


def test_a_gateway_in_its_own_process_settles_its_heap_and_an_embedded_one_leaves_it(settings) -> None:
    import asyncio
    import gc

    from gateway.app import create_app

    async def frozen_after_start(own_process: bool) -> int:
        app = create_app(settings, own_process=own_process)
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    before = gc.get_freeze_count()
    try:
        assert asyncio.run(frozen_after_start(False)) == before  # the tests' own heap is not the app's to freeze
        assert asyncio.run(frozen_after_start(True)) > before + 10_000  # imports, the app, the S3 client's model
    finally:
        gc.unfreeze()
