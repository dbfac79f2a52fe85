"""Fixtures for the gateway suite: a live uvicorn gateway on loopback over the moto server.

    start_gateway(settings, **app_kwargs)  → Live(url, ctx, settings): uvicorn in a thread, stopped at teardown
    tenant_token(ctx, name, tier)          → IssuedToken for a new tenant (through the real registry)
    sdk(live, token)                       → the real OpenAI SDK against the gateway (max_retries=0)
    drain(ctx)                             → watcher pass + runner passes with the echo engine stand-in

The runner here drives ``EchoEngine`` (the real chunk reading and result shaping,
a fake model); the real-engine proof is tests/e2e/test_gateway_sdk.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from helpers import live_app
from openai import OpenAI

from dropbatch.auth.tokens import IssuedToken, Tokens
from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.settings import Settings
from gateway.app import create_app
from runner.service import Runner
from watcher.service import Watcher

ADMIN_TOKEN = "admin-test-token-0123456789"
MAX_DRAIN_PASSES = 10


@dataclass
class Live:
    """A running gateway: its root URL (no /v1), and the Context it serves."""

    url: str
    ctx: Context
    settings: Settings

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@pytest.fixture
def start_gateway(make_context) -> Iterator[Callable[..., Live]]:
    with ExitStack() as servers:

        def start(settings: Settings, *, ctx: Context | None = None, **app_kwargs: Any) -> Live:
            ctx = ctx or make_context(settings)
            url = servers.enter_context(live_app(create_app(settings, ctx=ctx, **app_kwargs)))
            return Live(url=url, ctx=ctx, settings=settings)

        yield start


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings(DROPBATCH_ADMIN_TOKEN=ADMIN_TOKEN, DROPBATCH_CHUNK_LINES="4")


@pytest.fixture
def live(start_gateway, settings) -> Live:
    return start_gateway(settings, token_cache_seconds=0)


def tokens_of(ctx: Context) -> Tokens:
    return ctx.tokens


@pytest.fixture
def tenant_token() -> Callable[..., IssuedToken]:
    def make(ctx: Context, name: str, tier: str = "basic", **kwargs: Any) -> IssuedToken:
        ctx.tenants.create(name, tier)
        return tokens_of(ctx).create(name, **kwargs)

    return make


@pytest.fixture
def sdk() -> Iterator[Callable[[Live, str], OpenAI]]:
    clients: list[OpenAI] = []

    def make(live: Live, token: str) -> OpenAI:
        client = OpenAI(base_url=live.v1, api_key=token, max_retries=0, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def drain() -> Callable[..., int]:
    """``drain(ctx)``: admit what is in the inbox, then run the echo engine stand-in until the queue is empty."""

    def run(ctx: Context, engine: Any | None = None) -> int:
        Watcher(ctx).run_once()
        runner = Runner(ctx, engine or EchoEngine(ctx.store, ctx.settings))
        passes = 0
        while any(True for _ in ctx.queue.entries()) and passes < MAX_DRAIN_PASSES:
            runner.run_once()
            passes += 1
        return passes

    return run
