"""Fixtures for the security suite.

transcript              every byte a command or service printed, to grep for secrets afterwards
dropbatch_cli(env)      ``python -m dropbatch.cli ARGS`` in a subprocess; its output lands in the transcript
live_gateway(settings, ctx=None, **app_kwargs)  the gateway app under uvicorn on 127.0.0.1 (a thread),
                        generous rate limits unless ``rate_limits`` is given
counted_context(settings)  a Context whose S3 requests are counted (CountingStore over the real S3 store)
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import live_app

from dropbatch.context import Context
from dropbatch.settings import Settings
from dropbatch.storage.base import ObjectStore
from dropbatch.storage.s3 import S3ObjectStore
from gateway.app import create_app
from gateway.ratelimit import TierRate
from gateway.state import Gateway

GENEROUS = TierRate(per_minute=10**9, burst=10**9)


@dataclass
class Transcript:
    """Named outputs of one run; ``shown_once`` holds the outputs allowed to show a secret (create commands)."""

    outputs: dict[str, bytes] = field(default_factory=dict)
    shown_once: set[str] = field(default_factory=set)

    def add(self, name: str, data: bytes, *, shows_secret: bool = False) -> None:
        name = f"{len(self.outputs):02d} {name}"
        self.outputs[name] = data
        if shows_secret:
            self.shown_once.add(name)

    def leaks(self, secrets: dict[str, str]) -> list[tuple[str, str]]:
        """(output, secret name) for every secret found in an output that may not show it."""
        found = []
        for name, data in self.outputs.items():
            if name in self.shown_once:
                continue
            for label, secret in secrets.items():
                if secret and secret.encode() in data:
                    found.append((name, label))
        return found


@pytest.fixture
def transcript() -> Transcript:
    return Transcript()


@pytest.fixture
def dropbatch_cli(transcript: Transcript) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """``dropbatch_cli(env, *args, shows_secret=False)``; stdout and stderr both go to the transcript."""

    def run(env: dict[str, str], *args: str, shows_secret: bool = False, check: bool = True):
        proc = subprocess.run(
            [sys.executable, "-m", "dropbatch.cli", *args], env=env, capture_output=True, timeout=120, check=False
        )
        what = " ".join(args[:3])
        # Only the stdout of a create command may show its secret; its stderr never may.
        transcript.add(f"{what} (stdout)", proc.stdout, shows_secret=shows_secret)
        transcript.add(f"{what} (stderr)", proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"dropbatch {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
        return proc

    return run


@dataclass
class LiveGateway:
    url: str
    ctx: Context
    gateway: Gateway  # the app's shared state: its async stores are the ones its routes await


@pytest.fixture
def live_gateway(make_context) -> Iterator[Callable[..., LiveGateway]]:
    with ExitStack() as servers:

        def start(settings: Settings, *, ctx: Context | None = None, **app_kwargs: Any) -> LiveGateway:
            ctx = ctx or make_context(settings)
            app_kwargs.setdefault("rate_limits", {tier: GENEROUS for tier in settings.limits.tier_quotas})
            app = create_app(settings, ctx=ctx, **app_kwargs)
            url = servers.enter_context(live_app(app))
            return LiveGateway(url=url, ctx=ctx, gateway=app.state.gateway)

        yield start


class CountingStore:
    """An ObjectStore that records every S3 request it passes on as (method, bucket, key)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.requests: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.inner, method)
        if not callable(call):
            return call

        def counted(bucket: str, key: str = "", *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.requests.append((method, bucket, key))
            return call(bucket, key, *args, **kwargs)

        return counted

    def count(self, method: str, key_prefix: str = "") -> int:
        with self._lock:
            return sum(1 for m, _, key in self.requests if m == method and key.startswith(key_prefix))


@pytest.fixture
def counted_context() -> Callable[[Settings], Context]:
    """``counted_context(settings)`` → a Context over the real S3 store; ``ctx.store.requests`` lists the calls."""

    def make(settings: Settings) -> Context:
        return Context(settings=settings, store=CountingStore(S3ObjectStore(settings.storage)))

    return make
