"""Terraform-created resources, not bootstrapped ones, carry the drop-box end to end.

One ``terraform apply`` of terraform/local against a moto server of this module's own
(~80 s: the provider waits for SQS attributes and lifecycle rules to settle), or against
the emulator at DROPBATCH_TEST_S3_ENDPOINT (`make test-localstack`), then:
Settings come only from the Terraform outputs (``dropbatch.bootstrap`` is never called),
a tenant drops a job with the real `aws` CLI, the watcher admits it from the S3 → SQS
event the Terraform notification delivers, and the runner (EchoEngine stand-in) writes
the results into the Terraform outbox. A second test reads the applied configuration back.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_helpers import TERRAFORM_DIR, Terraform
from helpers import AwsCli, DropBox, aws_executable, make_jsonl, make_tenant, read_jsonl, unavailable

from dropbatch.context import Context
from dropbatch.emulator import moto_server
from dropbatch.engine.echo import EchoEngine
from dropbatch.errors import StorageUnavailable
from dropbatch.models import BatchStatus
from dropbatch.queues import SqsEventQueue
from dropbatch.settings import Settings
from dropbatch.storage.keys import OutputPrefix
from dropbatch.storage.s3 import make_client
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration

EXTERNAL_ENDPOINT = "DROPBATCH_TEST_S3_ENDPOINT"
SERVER_START_SECONDS = 30.0
MAX_RECEIVES = 10  # bounded, never timed: moto may hand out one message per receive
TENANT = "acme"


@dataclass(frozen=True)
class Applied:
    endpoint: str
    name: str
    outputs: dict


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def is_localstack(endpoint: str) -> bool:
    return _answers(endpoint + "/_localstack/health")


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server for this module alone (the shared one is reset between tests), or the
    external emulator named by DROPBATCH_TEST_S3_ENDPOINT; unique names keep them apart."""
    external = os.environ.get(EXTERNAL_ENDPOINT)
    if external:
        yield external.rstrip("/")
        return
    log_path = tmp_path_factory.mktemp("tf-moto") / "moto.log"
    with ExitStack() as stack:
        try:
            endpoint = stack.enter_context(moto_server(log_path=log_path, timeout=SERVER_START_SECONDS))
        except StorageUnavailable as exc:
            unavailable(f"{exc}:\n{log_path.read_text(errors='replace')[-2000:]}")
        yield endpoint


@pytest.fixture(scope="module")
def applied(terraform: Terraform, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Applied:
    """terraform/local applied once against ``moto_endpoint`` with unique names; its outputs."""
    work = tmp_path_factory.mktemp("tf-local")
    name = f"tf{secrets.token_hex(4)}"
    root = TERRAFORM_DIR / "local"
    terraform(
        root,
        "init",
        "-input=false",
        "-lockfile=readonly",
        f"-backend-config=path={work / 'terraform.tfstate'}",
        data_dir=work / "data",
    )
    terraform(
        root,
        "apply",
        "-auto-approve",
        "-input=false",
        "-no-color",
        f"-var=endpoint={moto_endpoint}",
        f"-var=name={name}",
        f"-var=tenants={json.dumps({TENANT: {}})}",
        # LocalStack applies the DLQ's redrive-allow policy; the provider hangs on it against moto.
        f"-var=enable_redrive_allow_policy={str(is_localstack(moto_endpoint)).lower()}",
        data_dir=work / "data",
    )
    proc = terraform(root, "output", "-json", data_dir=work / "data")
    outputs = {key: value["value"] for key, value in json.loads(proc.stdout).items()}
    return Applied(endpoint=moto_endpoint, name=name, outputs=outputs)


def parse_env_lines(text: str) -> dict[str, str]:
    """``NAME=value`` lines as a shell or `docker --env-file` reads them (comments skipped)."""
    env = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value
    return env


@pytest.fixture
def settings(applied: Applied, tmp_path: Path) -> Settings:
    env = parse_env_lines(applied.outputs["dropbatch_env"])
    env.update(
        {
            "DROPBATCH_HOME": str(tmp_path / "home"),
            "DROPBATCH_CHUNK_LINES": "4",
            "DROPBATCH_MAX_MODEL_LEN": "50",  # echo counts words as tokens: one long prompt fails
        }
    )
    return Settings.from_env(env)


def test_dropbatch_env_names_the_terraform_resources(applied: Applied, settings: Settings):
    env = parse_env_lines(applied.outputs["dropbatch_env"])
    assert env["DROPBATCH_S3_ENDPOINT"] == applied.endpoint
    assert env["DROPBATCH_QUEUE_URL"] == applied.outputs["settings_env"]["DROPBATCH_QUEUE_URL"]
    storage = settings.storage
    assert (storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket, storage.queue_name) == (
        f"{applied.name}-inbox",
        f"{applied.name}-outbox",
        f"{applied.name}-control",
        f"{applied.name}-intake",
    )
    assert storage.queue_url and storage.queue_url.endswith(f"/{applied.name}-intake")
    assert set(applied.outputs["role_arns"]) == {"gateway", "watcher", "runner"}
    for service, arn in applied.outputs["role_arns"].items():
        assert env[f"DROPBATCH_{service.upper()}_ROLE_ARN"] == arn


def test_dropbox_runs_on_terraform_resources(applied: Applied, settings: Settings, tmp_path: Path):
    executable = aws_executable()
    if executable is None:
        unavailable("the `aws` CLI (awscli) is not installed beside the interpreter or on PATH")
    (tmp_path / "aws-home").mkdir()
    aws = AwsCli(executable=executable, endpoint=applied.endpoint, home=tmp_path / "aws-home")
    (tmp_path / "dropbox").mkdir()
    dropbox = DropBox(aws=aws, workdir=tmp_path / "dropbox")

    ctx = Context.from_settings(settings)
    _, key = make_tenant(ctx, TENANT)
    lines = make_jsonl(10, long_ids={2}, long_words=80)
    ref = dropbox.drop(ctx, key, lines, job="tf-job")

    # Only the queue: the job must arrive through the Terraform S3 → SQS notification.
    assert settings.storage.queue_url is not None
    watcher = Watcher(ctx, events=SqsEventQueue(ctx.settings.storage, settings.storage.queue_url))
    admitted = 0
    for _ in range(MAX_RECEIVES):
        admitted += watcher.drain_events(wait_seconds=2)
        if admitted:
            break
    assert admitted == 1, "the manifest's S3 event never reached the Terraform intake queue"
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.IN_PROGRESS
    assert record.request_counts.total == len(lines)

    engine = EchoEngine(ctx.store, settings)
    assert Runner(ctx, engine).run_once() == 1
    record = ctx.batches.for_job(ref)
    assert record.status is BatchStatus.COMPLETED
    assert record.request_counts.model_dump() == {"total": 10, "completed": 9, "failed": 1}

    prefix = OutputPrefix(ref.tenant, record.content_sha256 or "")
    output = read_jsonl(aws.read(settings.storage.outbox_bucket, prefix.output_key))
    errors = read_jsonl(aws.read(settings.storage.outbox_bucket, prefix.errors_key))
    assert sorted(line["custom_id"] for line in output + errors) == sorted(line["custom_id"] for line in lines)
    assert [line["custom_id"] for line in errors] == ["req-2"]


def test_applied_configuration_matches_what_the_services_expect(applied: Applied, settings: Settings):
    s3 = make_client("s3", settings.storage)
    sqs = make_client("sqs", settings.storage)
    iam = make_client("iam", settings.storage)
    storage = settings.storage
    buckets = (storage.inbox_bucket, storage.outbox_bucket, storage.control_bucket)

    for bucket in buckets:
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values()) and len(block) == 4
        rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
        assert rules["abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 2
        expires = "expire-objects" in rules
        assert expires == (bucket != storage.control_bucket), f"{bucket}: records in control never expire"

    notification = s3.get_bucket_notification_configuration(Bucket=storage.inbox_bucket)["QueueConfigurations"]
    rules = [(r["Name"].lower(), r["Value"]) for n in notification for r in n["Filter"]["Key"]["FilterRules"]]
    assert rules == [("suffix", "/manifest.json")]

    attrs = sqs.get_queue_attributes(QueueUrl=storage.queue_url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{storage.queue_name}-dlq")
    assert int(redrive["maxReceiveCount"]) == 5
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Resource"] == attrs["QueueArn"]

    def actions_on(role: str) -> dict[str, set[str]]:
        policy = iam.get_role_policy(RoleName=f"{applied.name}-{role}", PolicyName=f"{applied.name}-{role}")
        granted: dict[str, set[str]] = {}
        for st in policy["PolicyDocument"]["Statement"]:
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for resource in resources:
                granted.setdefault(resource, set()).update(actions)
        return granted

    inbox, outbox = f"arn:aws:s3:::{storage.inbox_bucket}", f"arn:aws:s3:::{storage.outbox_bucket}"
    watcher, runner, gateway = actions_on("watcher"), actions_on("runner"), actions_on("gateway")
    assert "s3:PutObject" not in watcher[f"{inbox}/*"]
    assert watcher[f"{inbox}/*/*rejection.json"] == {"s3:PutObject"}
    assert "sqs:ReceiveMessage" in watcher[attrs["QueueArn"]]
    assert "s3:PutObject" not in runner[f"{inbox}/*"] and "s3:PutObject" in runner[f"{outbox}/*"]
    assert "s3:PutObject" in gateway[f"{inbox}/*"] and "s3:PutObject" not in gateway[f"{outbox}/*"]
    assert not any(arn.startswith("arn:aws:sqs") for arn in list(runner) + list(gateway))

    tenant_arn = applied.outputs["tenant_policy_arns"][TENANT]
    version = iam.get_policy(PolicyArn=tenant_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=tenant_arn, VersionId=version)["PolicyVersion"]["Document"]
    if isinstance(document, str):
        document = json.loads(document)
    by_sid = {st["Sid"]: st for st in document["Statement"]}
    assert by_sid["InboxWriteOwnPrefix"]["Resource"] == f"{inbox}/{TENANT}/*"
    # Listing is by key prefix: a bare "acme" would also list acme2/…, another tenant's keys, sizes and ETags.
    listing = by_sid["ListOwnPrefix"]["Condition"]["StringLike"]["s3:prefix"]
    assert set(listing if isinstance(listing, list) else [listing]) == {f"{TENANT}/", f"{TENANT}/*"}
    assert by_sid["OutboxReadOwnPrefix"]["Resource"] == f"{outbox}/{TENANT}/*"
