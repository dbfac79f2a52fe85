"""The client commands against a real moto server: the drop-box flow a user types.

tenant create → sample → `aws s3 cp` input → manifest sign → `aws s3 cp` manifest
→ (watcher admits) → status → (runner) → results --verify. The services run
in-process in burst mode; the runner drives the light EchoEngine, since what is
under test here is the command line, not the engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dropbatch.cli import main
from dropbatch.engine.echo import EchoEngine
from dropbatch.settings import ENV_VARS, Settings
from runner.service import Runner
from watcher.service import Watcher

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(s3_env: str, tmp_path: Path) -> Callable[..., click.testing.Result]:
    """``cli(*args, env=...)``: the `dropbatch` command pointed at the test's moto server."""
    names = {"DROPBATCH_SIGNING_SECRET", *ENV_VARS, *(f for spec in ENV_VARS.values() for f in spec[3])}
    base: dict[str, str | None] = dict.fromkeys(names)
    base |= {
        "DROPBATCH_S3_ENDPOINT": s3_env,
        "DROPBATCH_REGION": "us-east-1",
        "DROPBATCH_ACCESS_KEY_ID": "test",
        "DROPBATCH_SECRET_ACCESS_KEY": "test",
        "DROPBATCH_HOME": str(tmp_path / "home"),
    }

    def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
        return CliRunner().invoke(main, list(args), env={**base, **(env or {})}, catch_exceptions=False)

    return run


@pytest.fixture
def settings(make_settings: Callable[..., Settings], cli: Callable[..., click.testing.Result]) -> Settings:
    result = cli("bootstrap", "--json")
    assert result.exit_code == 0, result.stderr
    return make_settings()  # resources made by `dropbatch bootstrap` above


def test_the_drop_box_flow_from_the_command_line(settings: Settings, cli, aws, make_context, tmp_path: Path) -> None:
    created = cli("tenant", "create", "acme", "--tier", "premium", "--json")
    assert created.exit_code == 0, created.stderr
    key = json.loads(created.stdout)
    assert set(key) == {"tenant", "tier", "key_id", "secret"}
    assert (key["tenant"], key["tier"]) == ("acme", "premium")

    data = tmp_path / "input.jsonl"
    assert cli("sample", "--n", "25", "-o", str(data)).exit_code == 0
    aws.upload(data, settings.storage.inbox_bucket, "acme/j1/input.jsonl")
    manifest = tmp_path / "manifest.json"
    signed = cli("manifest", "sign", str(data), "--tenant", "acme", "--job", "j1", "--key-id", key["key_id"],
                 "-o", str(manifest), env={"DROPBATCH_SIGNING_SECRET": key["secret"]})
    assert signed.exit_code == 0, signed.stderr
    aws.upload(manifest, settings.storage.inbox_bucket, "acme/j1/manifest.json")

    ctx = make_context(settings)
    Watcher(ctx).run_once()
    admitted = json.loads(cli("status", "acme/j1", "--json").stdout)
    assert (admitted["status"], admitted["request_counts"]["total"]) == ("in_progress", 25)
    assert admitted["object"] == "batch" and admitted["tenant"] == "acme" and admitted["job"] == "j1"

    assert cli("results", "acme/j1").exit_code == 1  # nothing to read before it completes

    Runner(ctx, EchoEngine(ctx.store, settings)).run_once()
    done = cli("status", "acme/j1", "--wait", "--timeout", "30", "--json")
    assert done.exit_code == 0, done.stderr
    final = json.loads(done.stdout)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 25, "completed": 25, "failed": 0}
    location = final["result"]
    assert location["output_uri"] == f"s3://{location['bucket']}/{location['output_key']}"
    by_id = cli("status", f"acme/{final['id']}", "--json")  # what an SDK user has: the batch id
    assert by_id.exit_code == 0 and json.loads(by_id.stdout) == final
    assert cli("results", f"acme/{final['id']}").stdout == cli("results", "acme/j1").stdout

    results = cli("results", "acme/j1", "--verify", str(data))
    assert results.exit_code == 0, results.stderr
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    expected = {json.loads(line)["custom_id"] for line in data.read_text().splitlines()}
    assert sorted(line["custom_id"] for line in lines) == sorted(expected)
    assert results.stdout.encode() == aws.read(location["bucket"], location["output_key"]) + aws.read(
        location["bucket"], location["errors_key"]
    )

    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(data.read_text().splitlines(keepends=True)[:20]))
    summary = cli("results", "acme/j1", "--verify", str(partial), "--json")
    assert summary.exit_code == 1
    report = json.loads(summary.stdout)["verify"]
    assert (report["ok"], report["unexpected"], report["missing"]) == (False, 5, 0)


def test_a_rejected_manifest_shows_where_the_reason_is(settings: Settings, cli, aws, make_context, tmp_path: Path) -> None:
    key = json.loads(cli("tenant", "create", "acme", "--json").stdout)
    data = tmp_path / "input.jsonl"
    assert cli("sample", "--n", "3", "-o", str(data)).exit_code == 0
    aws.upload(data, settings.storage.inbox_bucket, "acme/j2/input.jsonl")
    manifest = tmp_path / "manifest.json"
    cli("manifest", "sign", str(data), "--tenant", "acme", "--job", "j2", "--key-id", key["key_id"],
        "-o", str(manifest), env={"DROPBATCH_SIGNING_SECRET": "not-the-secret"})
    aws.upload(manifest, settings.storage.inbox_bucket, "acme/j2/manifest.json")
    Watcher(make_context(settings)).run_once()

    status = json.loads(cli("status", "acme/j2", "--json").stdout)
    assert status["status"] == "failed"
    assert status["errors"]["data"][0]["code"] == "bad_signature"
    assert status["rejection"] == f"s3://{settings.storage.inbox_bucket}/acme/j2/rejection.json"
    rejection = json.loads(aws.read(settings.storage.inbox_bucket, "acme/j2/rejection.json"))
    assert rejection["code"] == "bad_signature"


def test_submit_uploads_in_parts_then_the_manifest_once(settings: Settings, cli, make_context, tmp_path: Path) -> None:
    key = json.loads(cli("tenant", "create", "bigco", "--tier", "enterprise", "--json").stdout)
    data = tmp_path / "big.jsonl"
    # Over the store's 8 MiB part size, so the upload is multipart.
    assert cli("sample", "--n", "40000", "-o", str(data)).exit_code == 0
    assert data.stat().st_size > 8 * 1024 * 1024
    secret = tmp_path / "key.json"
    secret.write_text(json.dumps(key))
    args = ["submit", str(data), "--tenant", "bigco", "--job", "big", "--key-id", key["key_id"],
            "--secret-file", str(secret), "--json"]
    submitted = cli(*args)
    assert submitted.exit_code == 0, submitted.stderr
    payload = json.loads(submitted.stdout)
    ctx = make_context(settings)
    assert payload["input_uris"] == [f"s3://{ctx.inbox}/bigco/big/big.jsonl"]
    assert ctx.store.head(ctx.inbox, "bigco/big/big.jsonl").size == data.stat().st_size

    Watcher(ctx).run_once()
    status = json.loads(cli("status", "bigco/big", "--json").stdout)
    assert status["id"] == payload["batch_id"]

    again = cli(*args)
    assert again.exit_code == 1
    assert json.loads(again.stderr)["error"]["code"] == "job_exists"


def test_signing_keys_can_be_added_and_revoked(settings: Settings, cli) -> None:
    assert cli("tenant", "create", "acme", "--tier", "basic").exit_code == 0
    duplicate = cli("tenant", "create", "acme", "--json")
    assert duplicate.exit_code == 1
    assert json.loads(duplicate.stderr)["error"]["code"] == "tenant_exists"

    added = json.loads(cli("key", "create", "--tenant", "acme", "--json").stdout)
    revoked = cli("key", "revoke", added["key_id"], "--json")
    assert revoked.exit_code == 0, revoked.stderr
    body = json.loads(revoked.stdout)
    assert body["key_id"] == added["key_id"] and body["revoked_at"] is not None
    assert cli("key", "create", "--tenant", "nobody").exit_code == 1


def test_grants_can_be_added_listed_and_revoked(settings: Settings, cli, make_context) -> None:
    assert cli("tenant", "create", "acme", "--tier", "basic").exit_code == 0
    made = cli("tenant", "grant", "acme", "s3://acme-data/in/", "--read", "--json")
    assert made.exit_code == 0, made.stderr
    grant = json.loads(made.stdout)
    assert (grant["uri"], grant["read"], grant["write"], grant["overwrite"]) == ("s3://acme-data/in", True, False, False)
    out = json.loads(cli("tenant", "grant", "acme", "s3://acme-data/out", "--write", "--overwrite", "--json").stdout)
    assert (out["write"], out["overwrite"], out["read"]) == (True, True, False)

    listed = json.loads(cli("tenant", "grants", "acme", "--json").stdout)
    assert {g["id"] for g in listed["data"]} == {grant["id"], out["id"]}
    text = cli("tenant", "grants", "acme").stdout
    assert "s3://acme-data/in" in text and "write+overwrite" in text

    revoked = cli("tenant", "revoke-grant", "acme", grant["id"], "--json")
    assert revoked.exit_code == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    assert [g.id for g in make_context(settings).grants.active("acme")] == [out["id"]]
    assert "revoked" in cli("tenant", "grants", "acme").stdout

    for args, code in (
        (("tenant", "grant", "acme", "s3://acme-data/x"), "invalid_grant"),  # neither --read nor --write
        (("tenant", "grant", "acme", "s3://acme-data/x", "--read", "--overwrite"), "invalid_grant"),
        (("tenant", "grant", "acme", f"s3://{settings.storage.outbox_bucket}/acme/", "--read"), "invalid_grant"),
        (("tenant", "grant", "acme", "s3://acme-data/a/../b", "--read"), "invalid_s3_uri"),
        (("tenant", "grant", "nobody", "s3://acme-data/x", "--read"), "not_found"),
        (("tenant", "revoke-grant", "acme", "grant_0000000000000000"), "not_found"),
        (("tenant", "grants", "nobody"), "not_found"),
    ):
        refused = cli(*args, "--json")
        assert refused.exit_code == 1, args
        assert json.loads(refused.stderr)["error"]["code"] == code, args
