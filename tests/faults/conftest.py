"""Fixtures for the fault-injection suite: the moto server behind ``proxy.FaultProxy``.

    start_proxy(plan)        → a FaultProxy in front of this test's (reset) moto server
    settings.with_endpoint(proxy.url) is how a test sends S3 and SQS through it
    proxied_drop_job(proxy)  → helpers.DropBox whose `aws` CLI talks to the proxy

Resources are bootstrapped straight on the server (``make_context().settings``); what the test
exercises (aws CLI uploads, watcher, runner, stores) goes through the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import AwsCli, DropBox
from proxy import FaultPlan, FaultProxy  # beside this file: pytest puts this folder on sys.path


@pytest.fixture
def start_proxy(s3_env: str) -> Iterator[Callable[..., FaultProxy]]:
    proxies: list[FaultProxy] = []

    def start(plan: FaultPlan | None = None) -> FaultProxy:
        proxy = FaultProxy(s3_env, plan or FaultPlan()).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def proxied_drop_job(aws: AwsCli, tmp_path: Path) -> Callable[[FaultProxy], Callable[..., object]]:
    """``proxied_drop_job(proxy)(ctx, key, lines, job=...)``: the real `aws s3 cp`, through the proxy."""

    def make(proxy: FaultProxy) -> Callable[..., object]:
        workdir = tmp_path / f"dropbox-{proxy.url.rsplit(':', 1)[1]}"
        workdir.mkdir(exist_ok=True)
        cli = AwsCli(executable=aws.executable, endpoint=proxy.url, home=aws.home)
        return DropBox(aws=cli, workdir=workdir).drop

    return make
