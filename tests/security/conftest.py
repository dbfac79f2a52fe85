"""Fixtures for the security suite.

transcript              every byte a command or service printed, to grep for secrets afterwards
dropbatch_cli(env)      ``python -m dropbatch.cli ARGS`` in a subprocess; its output lands in the transcript
live_gateway(settings)  the gateway app under uvicorn on 127.0.0.1 (a thread), generous rate limits
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from dropbatch.context import Context
from dropbatch.settings import Settings
from gateway.app import create_app
from gateway.ratelimit import TierRate

START_SECONDS = 20.0
GENEROUS = TierRate(per_minute=10**9, burst=10**9)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture
def live_gateway(make_context) -> Iterator[Callable[..., LiveGateway]]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings, **app_kwargs: Any) -> LiveGateway:
        ctx = make_context(settings)
        port = free_port()
        rates = {tier: GENEROUS for tier in settings.limits.tier_quotas}
        app = create_app(settings, ctx=ctx, rate_limits=rates, **app_kwargs)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"the gateway did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        return LiveGateway(url=f"http://127.0.0.1:{port}", ctx=ctx)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)
