"""Secrets never reach logs or any output but the one that creates them.

A full run in subprocesses, every service logging JSON at DEBUG: bootstrap, tenant
and token and key creation, manifest signing with DROPBATCH_SIGNING_SECRET, a
drop-box upload, `dropbatch submit`, the gateway serving tenant and admin requests
(good, wrong, revoked and admin tokens), the watcher admitting, a runner (echo
engine stand-in) finishing, then status/results/token list/config/revoke. Every
byte printed, every HTTP response body and every object a client can read is
grepped for the signing secrets, the bearer tokens, the admin token and the token
hashes. Only the stdout of the command that created a secret (and the admin API's
create response) may show it, and they are checked to really hold it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import AwsCli

from dropbatch.context import Context
from dropbatch.emulator import free_port
from dropbatch.settings import Settings
from dropbatch.storage.keys import JobRef

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "admin-7f3c9a1e5b2d4c6f8e0a1b3c5d7e9f10"
WAIT_SECONDS = 90.0  # bound on the watcher/gateway waits; each normally takes a second or two
RUNNER_SCRIPT = """
import os, sys
from dropbatch.context import Context
from dropbatch.engine.echo import EchoEngine
from dropbatch.observability.logging import configure_logging
from dropbatch.settings import Settings
from runner.service import Runner

settings = Settings.from_env(os.environ)
configure_logging("runner", settings.service.log_level)
ctx = Context.from_settings(settings)
runner = Runner(ctx, EchoEngine(ctx.store, settings))
for _ in range(10):
    if not any(True for _ in ctx.queue.entries()):
        break
    runner.run_once()
"""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {WAIT_SECONDS:.0f} s")
        time.sleep(0.2)


def _service(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "dropbatch.cli", *args], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_no_secret_reaches_any_log_or_output(s3_env, tmp_path, aws, dropbatch_cli, transcript):
    gateway_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DROPBATCH_S3_ENDPOINT": s3_env,
        "DROPBATCH_ACCESS_KEY_ID": "test",
        "DROPBATCH_SECRET_ACCESS_KEY": "test",
        "DROPBATCH_REGION": "us-east-1",
        "DROPBATCH_HOME": str(tmp_path / "home"),
        "DROPBATCH_LOG_LEVEL": "DEBUG",
        "DROPBATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        "DROPBATCH_INTAKE": "poll",
        "DROPBATCH_POLL_SECONDS": "0.2",
        "DROPBATCH_RUNNER_POLL_SECONDS": "0.2",
        "DROPBATCH_CHUNK_LINES": "2",
        "DROPBATCH_GATEWAY_PORT": str(gateway_port),
        "DROPBATCH_WATCHER_PORT": str(free_port()),
        "DROPBATCH_RUNNER_PORT": str(free_port()),
    }
    ctx = Context.from_settings(Settings.from_env(env))

    dropbatch_cli(env, "bootstrap", "--json")
    tenant = json.loads(
        dropbatch_cli(env, "tenant", "create", "acme", "--tier", "basic", "--json", shows_secret=True).stdout
    )
    issued = json.loads(dropbatch_cli(env, "token", "create", "--tenant", "acme", "--json", shows_secret=True).stdout)
    second_key = json.loads(dropbatch_cli(env, "key", "create", "--tenant", "acme", "--json", shows_secret=True).stdout)
    token = issued["token"]
    secrets = {
        "signing secret": tenant["secret"],
        "second signing secret": second_key["secret"],
        "bearer token": token,
        "bearer token hash": _sha256(token),
        "admin token": ADMIN_TOKEN,
    }

    # The drop-box: sign with the secret in the environment, upload with the aws CLI; and `submit`.
    sample = tmp_path / "input.jsonl"
    dropbatch_cli(env, "sample", "--n", "5", "-o", str(sample))
    signing_env = {**env, "DROPBATCH_SIGNING_SECRET": tenant["secret"]}
    manifest = tmp_path / "manifest.json"
    common = ["--tenant", "acme", "--key-id", tenant["key_id"], "--json"]
    dropbatch_cli(signing_env, "manifest", "sign", str(sample), "--job", "j1", "-o", str(manifest), *common)
    transcript.add("manifest.json as uploaded", manifest.read_bytes())
    cli = AwsCli(executable=aws.executable, endpoint=s3_env, home=aws.home)
    cli.upload(sample, ctx.inbox, "acme/j1/input.jsonl")
    cli.upload(manifest, ctx.inbox, "acme/j1/manifest.json")
    dropbatch_cli(
        {**env, "DROPBATCH_SIGNING_SECRET": second_key["secret"]},
        "submit",
        str(sample),
        "--job",
        "j2",
        "--tenant",
        "acme",
        "--key-id",
        second_key["key_id"],
        "--json",
    )

    procs: list[subprocess.Popen] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("gateway", "watcher", "runner")}
    try:
        gateway = _service(env, logs["gateway"], "gateway")
        procs.append(gateway)
        base = f"http://127.0.0.1:{gateway_port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/health", timeout=2).status_code < 500
            except httpx.HTTPError:
                return gateway.poll() is not None

        _wait_until(up, "the gateway answering /health")
        api_batch, token2 = _exercise_gateway(base, token, transcript)
        secrets["second bearer token"] = token2
        secrets["second bearer token hash"] = _sha256(token2)

        watcher = _service(env, logs["watcher"], "watcher")
        procs.append(watcher)
        refs = [JobRef("acme", "j1"), JobRef("acme", "j2")]

        def admitted() -> bool:
            try:
                return all(ctx.batches.for_job(ref).status.value != "validating" for ref in refs) and (
                    ctx.batches.get("acme", api_batch).status.value != "validating"
                )
            except Exception:  # noqa: BLE001 - not yet there; the bounded wait decides
                return False

        _wait_until(admitted, "the watcher admitting the three batches")
        _stop(watcher)
        with logs["runner"].open("wb") as sink:
            subprocess.run(
                [sys.executable, "-c", RUNNER_SCRIPT],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=True,
            )
    finally:
        for proc in procs:
            _stop(proc)
    for name, path in logs.items():
        transcript.add(f"{name} log", path.read_bytes())

    dropbatch_cli(env, "status", "acme/j1", "--json")
    dropbatch_cli(env, "results", "acme/j1", "--verify", str(sample))
    dropbatch_cli(env, "token", "list", "--json")
    dropbatch_cli(env, "token", "list")
    dropbatch_cli(env, "config", "--json")
    dropbatch_cli(env, "token", "revoke", issued["id"], "--json")
    dropbatch_cli(env, "key", "revoke", second_key["key_id"], "--json")

    # The gateway's own signing key for acme (it signs API batches): also a secret.
    pointer = json.loads(ctx.store.get(ctx.settings.storage.control_bucket, "gateway-keys/acme.json")[0])
    secrets["gateway signing secret"] = ctx.tenants.signing_key(pointer["key_id"]).secret
    # Everything a client can read back.
    for bucket in (ctx.inbox, ctx.outbox):
        for info in ctx.store.list(bucket):
            transcript.add(f"s3://{bucket}/{info.key}", ctx.store.get(bucket, info.key)[0])
    for info in ctx.store.list(ctx.settings.storage.control_bucket, "audit/"):
        transcript.add(f"audit {info.key}", ctx.store.get(ctx.settings.storage.control_bucket, info.key)[0])

    # The services did log, as JSON, at DEBUG: the grep below looked at real logs.
    for name in ("gateway", "watcher", "runner"):
        records = [json.loads(line) for line in logs[name].read_text().splitlines() if line.startswith("{")]
        assert records, f"the {name} logged nothing"
    assert any(r.get("message") == "admitted" for r in map(json.loads, _json_lines(logs["watcher"])))
    # The outputs allowed to show a secret really show it (so the strings grepped for are the right ones).
    shown = b"".join(transcript.outputs[name] for name in transcript.shown_once)
    for label in ("signing secret", "second signing secret", "bearer token", "second bearer token"):
        assert secrets[label].encode() in shown, label

    assert transcript.leaks(secrets) == []
    print(
        f"\n[security] grepped {len(transcript.outputs)} outputs ({sum(map(len, transcript.outputs.values()))} bytes) "
        f"for {len(secrets)} secrets: none leaked"
    )


def _json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


def _exercise_gateway(base: str, token: str, transcript) -> tuple[str, str]:
    """Tenant and admin calls, good and bad; every response body goes to the transcript. Returns (batch id, token2)."""
    tenant = {"Authorization": f"Bearer {token}"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base, timeout=30) as http:

        def call(name: str, method: str, url: str, *, shows_secret: bool = False, expect: int = 200, **kwargs):
            response = http.request(method, url, **kwargs)
            transcript.add(f"HTTP {name}", response.content, shows_secret=shows_secret)
            assert response.status_code == expect, (name, response.status_code, response.text)
            return response

        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "dropbatch-tiny", "messages": [{"role": "user", "content": "hi"}]},
        }
        files = {"file": ("in.jsonl", json.dumps(line).encode() + b"\n", "application/jsonl")}
        file_id = call("upload", "POST", "/v1/files", headers=tenant, files=files, data={"purpose": "batch"}).json()[
            "id"
        ]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        batch_id = call("create batch", "POST", "/v1/batches", headers=tenant, json=body).json()["id"]
        call("retrieve batch", "GET", f"/v1/batches/{batch_id}", headers=tenant)
        call("list batches", "GET", "/v1/batches", headers=tenant)
        call("list files", "GET", "/v1/files", headers=tenant)
        call("unknown token", "GET", "/v1/batches", headers={"Authorization": "Bearer dbt_" + "x" * 43}, expect=401)
        call("token as admin", "GET", "/admin/tokens", headers=tenant, expect=403)
        call(
            "wrong admin token",
            "GET",
            "/admin/tokens",
            headers={"Authorization": "Bearer " + ADMIN_TOKEN[:-1]},
            expect=401,
        )
        call("admin list", "GET", "/admin/tokens", headers=admin)
        created = call(
            "admin create",
            "POST",
            "/admin/tokens",
            headers=admin,
            json={"tenant": "acme"},
            shows_secret=True,
            expect=201,
        )
        token2, token2_id = created.json()["token"], created.json()["id"]
        call("admin list again", "GET", "/admin/tokens", params={"tenant": "acme"}, headers=admin)
        call("second token works", "GET", "/v1/batches", headers={"Authorization": f"Bearer {token2}"})
        call("admin revoke", "DELETE", f"/admin/tokens/{token2_id}", headers=admin)
        # The gateway caches token lookups for up to 2 s: revocation shows within that.
        revoked = {"Authorization": f"Bearer {token2}"}
        _wait_until(lambda: http.get("/v1/batches", headers=revoked).status_code == 401, "revocation taking effect")
        call("revoked token", "GET", "/v1/batches", headers=revoked, expect=401)
        # A token pasted into a URL: the 404 echoes the caller's own input back to it, but no log may keep it.
        call("token in a path", "GET", f"/v1/batches/{token}", headers=tenant, expect=404, shows_secret=True)
        call("openapi", "GET", "/openapi.json")
        call("metrics", "GET", "/metrics")
        call("health", "GET", "/health")
    return batch_id, token2
