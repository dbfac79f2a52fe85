"""Fixtures shared by the integration and e2e suites: a real moto server over HTTP and the real `aws` CLI.

    moto_server     session: a `python -m moto.server` process on a free 127.0.0.1 port, or the
                    emulator at DROPBATCH_TEST_S3_ENDPOINT (e.g. LocalStack: `make test-localstack`)
    s3_env          per test: that server, emptied (moto: POST /moto-api/reset; an external
                    endpoint: every bucket and queue on it deleted); its endpoint URL
    make_settings   per test: factory ``make_settings(**env)`` → Settings pointing at it (no I/O)
    make_context    factory ``make_context(settings=None, *, clock=None, bootstrap=True, **env)``
                    → Context.from_settings (S3ObjectStore over HTTP), resources bootstrapped
    (the same two factories, with the same signatures, as tests/unit/conftest.py's in-memory ones)
    aws             the real `aws` CLI (helpers.AwsCli) against the server
    drop_job        helpers.DropBox(...).drop: JSONL by `aws s3 cp` first, signed manifest last
    prometheus      session: path of Debian's `prometheus` server binary (apt-get install prometheus)
    promtool        session: path of its `promtool`

A real service that cannot start skips the test locally and fails it under CI=true.
Plain helpers (make_jsonl, make_tenant, Tamper, ...) live in tests/helpers.py.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers import AwsCli, DropBox, aws_executable, unavailable

from dropbatch.context import Context
from dropbatch.emulator import moto_server as moto_server_process
from dropbatch.errors import StorageUnavailable
from dropbatch.settings import Settings

SERVER_START_SECONDS = 30.0
# An emulator the suite runs against instead of its own moto. Every bucket and queue on it
# is deleted before each test: point it at a throwaway instance only.
EXTERNAL_ENDPOINT = "DROPBATCH_TEST_S3_ENDPOINT"


def _reset(endpoint: str) -> None:
    request = urllib.request.Request(endpoint + "/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _empty(endpoint: str) -> None:
    """Delete every bucket (all versions) and queue on an external emulator: its moto reset."""
    import boto3

    kwargs = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    s3 = boto3.client("s3", **kwargs)
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if doomed:
                s3.delete_objects(Bucket=name, Delete={"Objects": doomed, "Quiet": True})
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)
    sqs = boto3.client("sqs", **kwargs)
    for url in sqs.list_queues().get("QueueUrls", []):
        sqs.delete_queue(QueueUrl=url)


def _from_debian_prometheus(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        unavailable(f"{binary} is not installed (Debian: apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def prometheus() -> str:
    return _from_debian_prometheus("prometheus")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _from_debian_prometheus("promtool")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3/SQS server process on 127.0.0.1 (or DROPBATCH_TEST_S3_ENDPOINT); yields its endpoint URL."""
    external = os.environ.get(EXTERNAL_ENDPOINT)
    if external:
        yield external.rstrip("/")
        return
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with ExitStack() as stack:
        try:
            endpoint = stack.enter_context(moto_server_process(log_path=log_path, timeout=SERVER_START_SECONDS))
        except StorageUnavailable as exc:
            unavailable(f"{exc}:\n{log_path.read_text(errors='replace')[-2000:]}")
        yield endpoint


@pytest.fixture
def s3_env(moto_server: str) -> str:
    """The moto server with every bucket and queue cleared for this test; its endpoint URL."""
    if os.environ.get(EXTERNAL_ENDPOINT):
        _empty(moto_server)
    else:
        _reset(moto_server)
    return moto_server


@pytest.fixture
def make_settings(s3_env: str, tmp_path: Path) -> Callable[..., Settings]:
    """Factory: ``make_settings(DROPBATCH_CHUNK_LINES=4)`` → Settings pointing at the server.

    The same signature as tests/unit's: keyword settings only, nothing created
    (``make_context`` creates the resources).
    """

    def make(**env: object) -> Settings:
        base = {
            "DROPBATCH_S3_ENDPOINT": s3_env,
            "DROPBATCH_REGION": "us-east-1",
            "DROPBATCH_ACCESS_KEY_ID": "test",
            "DROPBATCH_SECRET_ACCESS_KEY": "test",
            "DROPBATCH_HOME": str(tmp_path / "dropbatch-home"),
        }
        return Settings.from_env({**base, **{name: str(value) for name, value in env.items()}})

    return make


@pytest.fixture
def make_context(make_settings: Callable[..., Settings]) -> Callable[..., Context]:
    """Factory: ``make_context(settings=None, *, clock=None, bootstrap=True, **env)`` → the production wiring.

    The same signature as tests/unit's. A Context over S3ObjectStore on the server for
    ``settings`` (else ``make_settings(**env)``); with ``bootstrap`` the buckets, the intake
    queue + DLQ and the inbox → SQS notification are created first
    (``dropbatch.bootstrap.bootstrap``, as `dropbatch up` does; once per storage per test).
    """
    from dropbatch.bootstrap import bootstrap as bootstrap_resources

    bootstrapped: list[object] = []

    def make(
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] | None = None,
        bootstrap: bool = True,
        **env: object,
    ) -> Context:
        settings = settings or make_settings(**env)
        if bootstrap and settings.storage not in bootstrapped:
            bootstrap_resources(settings.storage)
            bootstrapped.append(settings.storage)
        return Context.from_settings(settings, **({"clock": clock} if clock else {}))

    return make


@pytest.fixture
def aws(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> AwsCli:
    """The real `aws` CLI; ``aws("s3", "ls")`` returns CompletedProcess, raises AwsCliFailed on error."""
    executable = aws_executable()
    if executable is None:
        unavailable("the `aws` CLI (awscli) is not installed beside the interpreter or on PATH")
    return AwsCli(executable=executable, endpoint=moto_server, home=tmp_path_factory.mktemp("aws-home"))


@pytest.fixture
def drop_job(aws: AwsCli, tmp_path: Path) -> Callable[..., object]:
    """Factory: ``drop_job(ctx, signing_key, lines, job=..., tamper=...)`` → the JobRef uploaded to."""
    workdir = tmp_path / "dropbox"
    workdir.mkdir()
    return DropBox(aws=aws, workdir=workdir).drop
