"""localstack/: the compose file, the no-Docker runtime scripts and the ready hook.

The ready hook is run for real against the suite's moto server with the real `aws` CLI
(the same commands LocalStack's `awslocal` runs in the container), then a drop-box job
goes through the resources it created: S3 event → SQS → watcher → runner.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml
from deploy_helpers import REPO
from helpers import make_jsonl, make_tenant, unavailable

from dropbatch.emulator import free_port
from dropbatch.engine.echo import EchoEngine
from dropbatch.models import BatchStatus
from dropbatch.queues import SqsEventQueue, find_queue_url
from dropbatch.settings import Settings
from dropbatch.storage.s3 import make_client
from runner.service import Runner
from watcher.service import Watcher

LOCALSTACK = REPO / "localstack"
HOOK = LOCALSTACK / "init" / "ready.d" / "10-dropbatch.sh"
MAX_RECEIVES = 10


@pytest.mark.parametrize("script", ["install.sh", "start.sh", "stop.sh", "init/ready.d/10-dropbatch.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(LOCALSTACK / script)], check=True, timeout=30)


def test_runtime_requirements_carry_the_pins_it_needs():
    lines = {line.strip() for line in (LOCALSTACK / "requirements.txt").read_text().splitlines()}
    assert {
        "localstack-core[runtime]==2026.3.0",
        "cbor2<6",
        "cryptography==44.0.3",
        "pyopenssl==24.3.0",
    } <= lines


def test_compose_runs_localstack_on_loopback_with_the_ready_hook():
    compose = yaml.safe_load((LOCALSTACK / "docker-compose.yml").read_text())
    localstack = compose["services"]["localstack"]
    assert localstack["image"].startswith("localstack/localstack:")
    assert localstack["ports"] == ["127.0.0.1:4566:4566"]
    assert set(localstack["environment"]["SERVICES"].split(",")) == {"s3", "sqs", "iam", "sts"}
    assert "./init/ready.d:/etc/localstack/init/ready.d:ro" in localstack["volumes"]
    for name in ("gateway", "watcher", "runner"):
        service = compose["services"][name]
        assert service["command"] == [name]
        assert service["profiles"] == ["services"]
        assert service["environment"]["DROPBATCH_S3_ENDPOINT"] == "http://localstack:4566"
        assert service["depends_on"]["localstack"]["condition"] == "service_healthy"


@pytest.mark.integration
def test_ready_hook_creates_what_the_services_need(make_settings, make_context, drop_job, aws, s3_env):
    settings = make_settings(DROPBATCH_INBOX_BUCKET="hook-inbox")
    env = aws.env() | {
        # awscli 1.x sends SQS calls to AWS despite AWS_ENDPOINT_URL: name the endpoint.
        "DROPBATCH_AWS_CLI": f"{aws.executable} --endpoint-url {s3_env}",
        "DROPBATCH_INBOX_BUCKET": "hook-inbox",
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(["bash", str(HOOK)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"DROPBATCH_QUEUE_URL={find_queue_url(settings.storage)}" in proc.stdout

    s3 = make_client("s3", settings.storage)
    for bucket in ("hook-inbox", settings.storage.outbox_bucket, settings.storage.control_bucket):
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    ctx = make_context(settings, bootstrap=False)  # what the hook made, nothing more
    _, key = make_tenant(ctx, "acme")
    ref = drop_job(ctx, key, make_jsonl(6))
    queue_url = find_queue_url(settings.storage)
    assert queue_url is not None
    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, queue_url))
    admitted = 0
    for _ in range(MAX_RECEIVES):
        admitted += watcher.drain_events(wait_seconds=2)
        if admitted:
            break
    assert admitted == 1, "the manifest's S3 event never reached the hook's intake queue"
    assert Runner(ctx, EchoEngine(ctx.store, settings)).run_once() == 1
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.COMPLETED
    assert record.request_counts.completed == 6


@contextmanager
def _localstack(home: Path) -> Iterator[object]:
    """A LocalStack runtime started by start.sh in ``home`` on a free port; its S3 client. Stopped by stop.sh."""
    venv = Path(os.environ.get("LOCALSTACK_VENV", REPO / ".venv-localstack"))
    if not (venv / "bin" / "python").exists():
        unavailable(f"no LocalStack runtime in {venv} (make localstack-install)")
    port = free_port()
    env = {**os.environ, "LOCALSTACK_VENV": str(venv), "LOCALSTACK_HOME": str(home), "LOCALSTACK_PORT": str(port)}
    start = subprocess.run(["bash", str(LOCALSTACK / "start.sh")], env=env, capture_output=True, text=True,
                           timeout=300)
    try:
        assert start.returncode == 0, start.stderr + (home / "localstack.log").read_text()[-3000:]
        storage = Settings.from_env({"DROPBATCH_S3_ENDPOINT": f"http://127.0.0.1:{port}", "DROPBATCH_REGION": "us-east-1",
                                     "DROPBATCH_ACCESS_KEY_ID": "test", "DROPBATCH_SECRET_ACCESS_KEY": "test"}).storage
        yield make_client("s3", storage)
    finally:
        subprocess.run(["bash", str(LOCALSTACK / "stop.sh")], env=env, capture_output=True, timeout=120)


@pytest.mark.integration
def test_two_runtimes_keep_their_s3_objects_apart(tmp_path):
    """The test instance deletes every bucket before each test; one you use beside it, with buckets
    of the same names, keeps its objects (LocalStack's own storage directory is one per machine)."""
    big = os.urandom(2 * 1024 * 1024)  # past LocalStack's 512 KiB in memory: its object file is on disk
    with ExitStack() as stack:
        yours = stack.enter_context(_localstack(tmp_path / "yours"))
        tests = stack.enter_context(_localstack(tmp_path / "tests"))
        for s3 in (yours, tests):
            s3.create_bucket(Bucket="dropbatch-inbox")
        yours.put_object(Bucket="dropbatch-inbox", Key="kept", Body=big)
        assert (tmp_path / "yours" / "s3" / "dropbatch-inbox").is_dir(), "object files live in the instance's home"
        tests.put_object(Bucket="dropbatch-inbox", Key="a-test's", Body=big)
        tests.delete_object(Bucket="dropbatch-inbox", Key="a-test's")
        tests.delete_bucket(Bucket="dropbatch-inbox")  # as the suite's reset does
        yours.put_object(Bucket="dropbatch-inbox", Key="after", Body=big)
        assert yours.get_object(Bucket="dropbatch-inbox", Key="kept")["Body"].read() == big
        assert yours.get_object(Bucket="dropbatch-inbox", Key="after")["Body"].read() == big
    assert not (tmp_path / "yours" / "s3").exists(), "stop.sh removes the object files with the instance"
