"""Helpers shared by the integration and e2e suites: the real `aws` CLI, request lines, drop-box jobs.

Import them as ``from helpers import ...`` (``tests/`` is on ``sys.path`` through
``tests/conftest.py``). The fixtures in ``conftest.py`` wire these to the moto server.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dropbatch.auth.tenants import SigningKey, Tenant
from dropbatch.context import Context
from dropbatch.storage.keys import JobRef
from manifests import build_manifest, dumps, sign

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "dropbatch-tiny"
INPUT_NAME = "input.jsonl"


def aws_executable() -> str | None:
    """The `aws` CLI installed beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "aws"
    return str(beside) if beside.exists() else shutil.which("aws")


class AwsCliFailed(RuntimeError):
    """Raised when an `aws` command exits non-zero; the message carries its stderr."""


@dataclass(frozen=True)
class AwsCli:
    """Runs the real `aws` CLI against ``endpoint`` with throwaway credentials and config."""

    executable: str
    endpoint: str
    home: Path

    def env(self, *, multipart_threshold: str | None = None) -> dict[str, str]:
        config = self.home / "config"
        if multipart_threshold is not None:
            config = self.home / f"config-multipart-{multipart_threshold}"
            # s3transfer raises every part to S3's 5 MiB minimum, so a small file
            # above this threshold is still uploaded as a one-part multipart upload.
            config.write_text(f"[default]\ns3 =\n  multipart_threshold = {multipart_threshold}\n")
        elif not config.exists():
            config.write_text("[default]\n")
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.home / "credentials"),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def __call__(
        self, *args: str, multipart_threshold: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """``aws ARGS...``; stdout stays bytes so object bodies come back unchanged."""
        proc = subprocess.run(
            [self.executable, *args],
            env=self.env(multipart_threshold=multipart_threshold),
            capture_output=True,
            timeout=300,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AwsCliFailed(
                f"aws {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def upload(self, path: Path, bucket: str, key: str, *, multipart_threshold: str | None = None) -> None:
        self("s3", "cp", "--only-show-errors", str(path), f"s3://{bucket}/{key}", multipart_threshold=multipart_threshold)

    def read(self, bucket: str, key: str) -> bytes:
        """The object's bytes, through `aws s3 cp s3://... -`."""
        return self("s3", "cp", "--only-show-errors", f"s3://{bucket}/{key}", "-").stdout


# -- request lines -------------------------------------------------------------------


def make_line(
    custom_id: str,
    endpoint: str = CHAT,
    model: str = MODEL,
    *,
    text: str = "hello world",
    max_tokens: int = 8,
    temperature: float | None = None,
) -> dict[str, Any]:
    """One OpenAI batch request line for ``endpoint`` (sampled unless ``temperature`` is 0, as OpenAI's default is 1)."""
    if endpoint == CHAT:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
    elif endpoint == COMPLETIONS:
        body = {"model": model, "prompt": text, "max_tokens": max_tokens}
    elif endpoint == EMBEDDINGS:
        body = {"model": model, "input": text}
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    if temperature is not None and endpoint != EMBEDDINGS:
        body["temperature"] = temperature
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def make_jsonl(
    n: int,
    endpoint: str = CHAT,
    model: str = MODEL,
    *,
    prefix: str = "req",
    words: int = 3,
    long_ids: Iterable[int] = (),
    long_words: int = 200,
    max_tokens: int = 8,
    temperature: float | None = None,
) -> list[dict[str, Any]]:
    """``n`` request lines ``<prefix>-<i>``; lines in ``long_ids`` get ``long_words``-word prompts."""
    long = set(long_ids)
    return [
        make_line(
            f"{prefix}-{i}",
            endpoint,
            model,
            text=" ".join(f"w{i}x{j}" for j in range(long_words if i in long else words)),
            max_tokens=max_tokens,
            temperature=temperature,
        )
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# -- tenants and drop-box jobs ---------------------------------------------------------


def make_tenant(ctx: Context, name: str, tier: str = "basic") -> tuple[Tenant, SigningKey]:
    """A tenant and its first manifest signing key, through the real registry."""
    tenant = ctx.tenants.create(name, tier)
    return tenant, ctx.tenants.create_signing_key(name)


class Tamper(enum.Enum):
    """Ways a drop-box job can differ from what was signed."""

    INPUT_BYTE = "input_byte"  # one byte of the input changed after signing
    MANIFEST_BYTE = "manifest_byte"  # one nonce character changed in the file: still canonical
    MANIFEST_WHITESPACE = "manifest_whitespace"  # a space added to the file: no longer canonical
    MANIFEST_FIELD = "manifest_field"  # a field changed and re-serialized canonically, old signature kept


@dataclass(frozen=True)
class DropBox:
    """Submits jobs the way a client does: `aws s3 cp` of the JSONL first, the manifest last."""

    aws: AwsCli
    workdir: Path

    def drop(
        self,
        ctx: Context,
        key: SigningKey,
        lines: Sequence[dict[str, Any]] | Path,
        *,
        job: str = "job-1",
        endpoint: str | None = None,
        model: str = MODEL,
        nonce: str | None = None,
        key_id: str | None = None,
        secret: str | None = None,
        upload_to: JobRef | None = None,
        tamper: Tamper | None = None,
        multipart_manifest: bool = False,
    ) -> JobRef:
        """Sign ``lines`` (or an existing JSONL file) as ``key.tenant``/``job`` and upload them.

        ``key_id``/``secret`` override what the manifest names and is signed with;
        ``upload_to`` puts the manifest under another prefix than the one it names.
        Returns the prefix the manifest was uploaded to.
        """
        tenant = key.tenant
        folder = self.workdir / f"{tenant}-{job}-{len(list(self.workdir.iterdir()))}"
        folder.mkdir()
        if isinstance(lines, Path):
            source = lines
        else:
            source = write_jsonl(folder / INPUT_NAME, lines)
            if endpoint is None and lines:
                endpoint = lines[0]["url"]
        manifest = build_manifest(
            [source],
            tenant=tenant,
            job=job,
            key_id=key_id or key.key_id,
            endpoint=endpoint or CHAT,
            model=model,
            created_at=ctx.now(),
            input_keys=[f"{tenant}/{job}/{INPUT_NAME}"],
            nonce=nonce,
        )
        signed = sign(manifest, secret if secret is not None else key.secret)
        if tamper is Tamper.INPUT_BYTE:
            source = _changed_copy(source, folder / "tampered.jsonl")
        data = dumps(signed)
        if tamper is Tamper.MANIFEST_BYTE:
            data = _replace_once(data, f'"nonce": "{signed.nonce}"', f'"nonce": "{_flip(signed.nonce)}"')
        elif tamper is Tamper.MANIFEST_WHITESPACE:
            data = _replace_once(data, '"job": ', '"job":  ')
        elif tamper is Tamper.MANIFEST_FIELD:
            data = dumps(signed.model_copy(update={"metadata": {"priority": "high"}}))
        manifest_path = folder / "manifest.json"
        manifest_path.write_bytes(data)

        target = upload_to or JobRef(tenant, job)
        self.aws.upload(source, ctx.inbox, f"{tenant}/{job}/{INPUT_NAME}")
        self.aws.upload(
            manifest_path, ctx.inbox, target.manifest_key, multipart_threshold="1" if multipart_manifest else None
        )
        return target


def _changed_copy(source: Path, dest: Path) -> Path:
    """A copy of a JSONL file with one letter of the first prompt changed (still valid JSON)."""
    data = source.read_bytes()
    at = data.index(b'"w') + 1
    dest.write_bytes(data[:at] + b"W" + data[at + 1 :])
    return dest


def _flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


def _replace_once(data: bytes, old: str, new: str) -> bytes:
    if data.count(old.encode()) != 1:
        raise ValueError(f"{old!r} does not occur exactly once in the manifest")
    return data.replace(old.encode(), new.encode())


# -- reading state back ----------------------------------------------------------------


def control_keys(ctx: Context, prefix: str) -> list[str]:
    """Keys under ``prefix`` in the control bucket."""
    return [info.key for info in ctx.store.list(ctx.settings.storage.control_bucket, prefix)]


def audit_events(ctx: Context, event: str) -> list[dict[str, Any]]:
    """Entries of the control bucket's audit log named ``event``."""
    bucket = ctx.settings.storage.control_bucket
    entries = [json.loads(ctx.store.get(bucket, key)[0]) for key in control_keys(ctx, "audit/")]
    return [entry for entry in entries if entry["event"] == event]


def with_async_store(storage: Any, use: Callable[[Any], Awaitable[Any]], *, pool_size: int = 2) -> Any:
    """``use(store)`` on a fresh event loop with an ``AsyncS3ObjectStore`` over ``storage``, closed after."""
    from dropbatch.storage.aio import AsyncS3ObjectStore

    async def main() -> Any:
        store = AsyncS3ObjectStore(storage, pool_size=pool_size)
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(main())


def unavailable(reason: str) -> None:
    """Skip locally; under CI a missing real service is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def live_app(app: Any, *, start_seconds: float = 30.0) -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn on a free loopback port in a thread; yields its root URL."""
    import uvicorn

    from dropbatch.emulator import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=f"asgi-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_seconds
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"the app did not start on 127.0.0.1:{port}")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class ShiftedClock:
    """Real time plus an offset the test moves forward, so order and expiry are defined without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def load_bench(name: str) -> ModuleType:
    """A script of bench/ (``load_bench("render_dashboard")``) imported as a module."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module
