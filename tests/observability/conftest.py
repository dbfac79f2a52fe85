"""Fixtures for the observability suite: promtool, the exported metric names, services that did real work.

    run_promtool        ``run_promtool("check", "rules", path, stdin=b"")`` → CompletedProcess
                        (the ``promtool`` and ``prometheus`` fixtures are tests/conftest.py's)
    exported_names      every sample name a dropbatch service exports, plus Prometheus's ``up``
    worked_services     a watcher and a runner (EchoEngine) that admitted and ran real jobs
                        over the memory store; their Metrics and the Context
    render_dashboard    bench/render_dashboard.py, imported as a module

Nothing here starts vLLM or Ray; test_render_dashboard.py runs a real Prometheus on loopback.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from helpers import load_bench

from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings
from dropbatch.storage.memory import MemoryObjectStore
from manifests import build_manifest, dumps, sign
from runner.service import Runner
from watcher.service import Watcher

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMTOOL_SECONDS = 60
MODEL = "dropbatch-tiny"
CHAT = "/v1/chat/completions"




@pytest.fixture
def run_promtool(promtool: str) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [promtool, *args], input=stdin, capture_output=True, timeout=PROMTOOL_SECONDS, cwd=cwd, check=False
        )

    return run


def sample_names(metrics: Metrics) -> set[str]:
    """The sample names a registry exposes: counters as ``_total``, histograms as ``_bucket/_sum/_count``."""
    names = set()
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="session")
def exported_names() -> frozenset[str]:
    return frozenset(sample_names(Metrics("names")) | {"up"})


@dataclass
class Worked:
    """A watcher and a runner after real passes: what they were given, and their metrics."""

    ctx: Context
    watcher: Metrics
    runner: Metrics
    lines: int
    failing: frozenset[str]
    tokens_per_line: int


@pytest.fixture
def worked_services(tmp_path: Path) -> Worked:
    """Admit two signed jobs and one tampered one, run the queue through EchoEngine, refresh the gauges.

    EchoEngine fakes only the model; admission, chunking, result shaping and every
    metric recorded on the way are the services' own code.
    """
    settings = Settings.from_env({"DROPBATCH_CHUNK_LINES": "3"})
    storage = settings.storage
    store = MemoryObjectStore([storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket])
    ctx = Context(settings=settings, store=store)
    ctx.tenants.create("acme", "enterprise")
    key = ctx.tenants.create_signing_key("acme")
    words = 4
    lines, failing = 7, frozenset({"req-2", "req-5"})

    def drop(job: str, *, secret: str) -> None:
        body = [
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": " ".join(f"{job}_{i}_{k}" for k in range(words))}],
                    "max_tokens": words,
                },
            }
            for i in range(lines)
        ]
        data = ("\n".join(json.dumps(line) for line in body) + "\n").encode()
        local = tmp_path / f"{job}.jsonl"
        local.write_bytes(data)
        input_key = f"acme/{job}/input.jsonl"
        manifest = build_manifest(
            [local],
            tenant="acme",
            job=job,
            key_id=key.key_id,
            endpoint=CHAT,
            model=MODEL,
            created_at=int(ctx.clock()),
            input_keys=[input_key],
        )
        store.put(ctx.inbox, input_key, data)
        store.put(ctx.inbox, f"acme/{job}/manifest.json", dumps(sign(manifest, secret)))

    drop("job-a", secret=key.secret)
    drop("job-b", secret=key.secret)
    drop("job-forged", secret="not-the-tenant-secret-0123456789")
    watcher_metrics, runner_metrics = Metrics("watcher"), Metrics("runner")
    Watcher(ctx, metrics=watcher_metrics).run_once()
    engine = EchoEngine(store, settings, fail=lambda row: "RuntimeError: boom" if row["custom_id"] in failing else None)
    runner = Runner(ctx, engine, metrics=runner_metrics, sleep=lambda seconds: None)  # no retry backoff here
    for _ in range(5):
        if not runner.run_once():
            break
    runner.observe_queue()
    return Worked(ctx, watcher_metrics, runner_metrics, lines, failing, tokens_per_line=words)


@pytest.fixture(scope="session")
def render_dashboard() -> ModuleType:
    return load_bench("render_dashboard")
