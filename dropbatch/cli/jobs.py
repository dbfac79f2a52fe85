"""`dropbatch manifest sign`, `submit`, `sample`: the client side of the drop-box.

The signing secret is a credential: it comes from ``DROPBATCH_SIGNING_SECRET`` or a
file (``--secret-file``), never from a command-line argument, where other users
of the machine and the shell history would see it.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import ValidationError
from tqdm import tqdm

from dropbatch.cli.common import Command, Group, State, emit, s3_uri
from dropbatch.deadlines import DEFAULT_WINDOW, CompletionWindow
from dropbatch.errors import ConfigError, Conflict, InvalidRequest, ObjectNotFound
from dropbatch.ids import batch_id_for
from dropbatch.jsonl import file_errors
from dropbatch.models import ENDPOINTS
from dropbatch.storage.keys import JobRef, check_name
from manifests import Manifest, build_manifest, dumps, sign

SECRET_VAR = "DROPBATCH_SIGNING_SECRET"
# Uploads at least this large get a progress bar even when stderr is not a terminal.
PROGRESS_BYTES = 4 * 1024 * 1024
READ_CHUNK = 8 * 1024 * 1024


def signing_secret(environ: Mapping[str, str], secret_file: Path | None) -> str:
    """The secret from ``--secret-file`` (plain text, or the JSON of `tenant create --json`) or the env."""
    if secret_file is not None:
        text = secret_file.read_text(encoding="utf-8").strip()
        if text.startswith("{"):
            try:
                text = str(json.loads(text).get("secret") or "")
            except (ValueError, AttributeError):
                raise ConfigError(f"{secret_file} is JSON but holds no \"secret\" field") from None
        if not text:
            raise ConfigError(f"{secret_file} holds no signing secret")
        return text
    secret = environ.get(SECRET_VAR, "")
    if not secret:
        raise ConfigError(
            f"no signing secret: set {SECRET_VAR} or pass --secret-file PATH "
            "(the secret is never accepted as a command-line argument)"
        )
    return secret


def _metadata(_ctx: click.Context, _param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


def manifest_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options `manifest sign` and `submit` share."""
    options = [
        click.option("--tenant", required=True, help="Your tenant name."),
        click.option("--job", required=True, help="A new job name; the inbox prefix is <tenant>/<job>/."),
        click.option(
            "--endpoint",
            type=click.Choice(ENDPOINTS),
            default=ENDPOINTS[0],
            show_default=True,
            help="The url every request line uses.",
        ),
        click.option("--model", default=None, help="body.model of every line [default: DROPBATCH_MODEL_NAME]."),
        click.option("--key-id", required=True, help="Your signing key id (key_…)."),
        click.option("--metadata", multiple=True, callback=_metadata, metavar="KEY=VALUE", help="Batch metadata; repeatable."),
        click.option(
            "--completion-window",
            type=click.Choice(get_args(CompletionWindow)),
            default=DEFAULT_WINDOW,
            show_default=True,
            help="24h (OpenAI's) or 1h, the priority window (tiers in DROPBATCH_PRIORITY_WINDOW_TIERS).",
        ),
        click.option(
            "--secret-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help=f"File holding the signing secret [default: ${SECRET_VAR}].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def signed_manifest(
    state: State,
    files: Sequence[Path],
    *,
    tenant: str,
    job: str,
    endpoint: str,
    model: str | None,
    key_id: str,
    metadata: dict[str, str],
    secret_file: Path | None,
    completion_window: str = DEFAULT_WINDOW,
) -> Manifest:
    secret = signing_secret(state.environ, secret_file)
    check_name(tenant, "tenant")
    check_name(job, "job")
    model = model or state.settings.engine.model_name
    shown = 5
    errors = file_errors(files, endpoint=endpoint, model=model, max_line_bytes=state.settings.limits.max_line_bytes,
                         most=shown)
    if errors:  # refused here, not by the watcher after the upload
        more = f" (the first {shown}; fix them and sign again)" if len(errors) == shown else ""
        raise InvalidRequest(" ".join(e.message for e in errors) + more,
                             code=errors[0].code, param=errors[0].param, line=errors[0].line)
    try:
        manifest = build_manifest(
            list(files),
            tenant=tenant,
            job=job,
            key_id=key_id,
            endpoint=endpoint,
            model=model,
            created_at=int(time.time()),
            metadata=metadata,
            completion_window=completion_window,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "manifest"
        raise InvalidRequest(f"cannot build the manifest ({where}): {first.get('msg')}", code="invalid_manifest") from None
    return sign(manifest, secret)


def _manifest_summary(manifest: Manifest, inbox: str) -> dict[str, Any]:
    ref = JobRef(manifest.tenant, manifest.job)
    return {
        "tenant": manifest.tenant,
        "job": manifest.job,
        "key_id": manifest.key_id,
        "endpoint": manifest.endpoint,
        "model": manifest.model,
        "nonce": manifest.nonce,
        "inputs": [item.model_dump() for item in manifest.inputs],
        "input_uris": [s3_uri(inbox, item.key) for item in manifest.inputs],
        "manifest_uri": s3_uri(inbox, ref.manifest_key),
    }


@click.group("manifest", cls=Group)
def manifest_group() -> None:
    """Signed manifests: what starts a drop-box job."""


@manifest_group.command("sign")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@manifest_options
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("manifest.json"), show_default=True
)
@click.pass_obj
def sign_command(
    state: State, files: tuple[Path, ...], output: Path, secret_file: Path | None, as_json: bool, **fields: Any
) -> None:
    """Write a signed manifest for FILES (uploaded as <tenant>/<job>/<file name>).

    Upload the files first and the manifest last, unmodified:
    aws s3 cp manifest.json s3://<inbox>/<tenant>/<job>/manifest.json
    """
    manifest = signed_manifest(state, files, secret_file=secret_file, **fields)
    data = dumps(manifest)
    output.write_bytes(data)
    inbox = state.settings.storage.inbox_bucket
    summary = _manifest_summary(manifest, inbox)
    uploads = [f"  aws s3 cp {path} {uri}" for path, uri in zip(files, summary["input_uris"], strict=True)]
    text = "\n".join(
        [
            f"wrote {output} ({len(files)} input{'s' if len(files) != 1 else ''}, signed with {manifest.key_id})",
            "upload the input first, the manifest last:",
            *uploads,
            f"  aws s3 cp {output} {summary['manifest_uri']}",
        ]
    )
    emit(as_json, {"manifest": str(output), "manifest_sha256": hashlib.sha256(data).hexdigest(), **summary}, text)


def _upload_chunks(path: Path, bar: tqdm) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk
            bar.update(len(chunk))  # after the store took the chunk (and sent its part)


@click.command("submit", cls=Command)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@manifest_options
@click.pass_obj
def submit_command(state: State, files: tuple[Path, ...], secret_file: Path | None, as_json: bool, **fields: Any) -> None:
    """Upload FILES to the inbox, then sign and upload the manifest (last), in one step."""
    manifest = signed_manifest(state, files, secret_file=secret_file, **fields)
    ref = JobRef(manifest.tenant, manifest.job)
    ctx = state.context
    try:
        ctx.store.head(ctx.inbox, ref.manifest_key)
    except ObjectNotFound:
        pass
    else:
        raise Conflict(f"job {ref} already has a manifest in {s3_uri(ctx.inbox)}; use a new job name", code="job_exists")
    for path, item in zip(files, manifest.inputs, strict=True):
        show = sys.stderr.isatty() or item.size >= PROGRESS_BYTES
        with tqdm(
            total=item.size, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name, file=sys.stderr,
            disable=not show, mininterval=0.5 if sys.stderr.isatty() else 5.0,
        ) as bar:
            ctx.store.upload_stream(ctx.inbox, item.key, _upload_chunks(path, bar), content_type="application/jsonl")
    data = dumps(manifest)
    # Last, and only once: the manifest is what starts the job.
    ctx.store.put(ctx.inbox, ref.manifest_key, data, if_none_match=True, content_type="application/json")
    batch_id = batch_id_for(ref.tenant, ref.job, hashlib.sha256(data).hexdigest())
    summary = _manifest_summary(manifest, ctx.inbox)
    text = f"submitted {ref} as {batch_id}\n  follow it with: dropbatch status {ref} --wait"
    emit(as_json, {"job_ref": str(ref), "batch_id": batch_id, **summary}, text)


# -- sample ------------------------------------------------------------------------------

_TOPICS = (
    "the ocean", "prime numbers", "coffee", "volcanoes", "the moon", "bicycles", "honeybees", "glaciers",
    "the printing press", "jazz", "photosynthesis", "lighthouses", "chess", "rainbows", "the Roman roads",
    "octopuses", "compilers", "bread", "thunderstorms", "maps", "origami", "tides", "libraries", "owls",
)
_TEMPLATES = (
    "Explain {topic} in one sentence.",
    "Write a haiku about {topic}.",
    "List three facts about {topic}.",
    "Why do people find {topic} interesting?",
    "Give a short tip related to {topic}.",
    "Describe {topic} to a five-year-old.",
    "What is a common misconception about {topic}?",
    "Summarize the history of {topic} in two sentences.",
)
_SYSTEM = "You are a concise assistant."


def sample_lines(n: int, *, endpoint: str, model: str, max_tokens: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` request lines with varied short prompts; the same arguments give the same lines."""
    rng = random.Random(seed)
    width = max(5, len(str(n)))
    for i in range(n):
        prompt = rng.choice(_TEMPLATES).format(topic=rng.choice(_TOPICS))
        if endpoint == "/v1/chat/completions":
            messages = [{"role": "user", "content": prompt}]
            if i % 3 == 0:
                messages.insert(0, {"role": "system", "content": _SYSTEM})
            body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        elif endpoint == "/v1/completions":
            body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        elif endpoint == "/v1/responses":
            body = {"model": model, "input": prompt, "max_output_tokens": max_tokens, "temperature": 0}
        else:
            body = {"model": model, "input": prompt}
        yield {"custom_id": f"request-{i:0{width}d}", "method": "POST", "url": endpoint, "body": body}


@click.command("sample", cls=Command)
@click.option("--n", "count", type=click.IntRange(min=1), default=200, show_default=True, help="Request lines.")
@click.option("--endpoint", type=click.Choice(ENDPOINTS), default=ENDPOINTS[0], show_default=True)
@click.option("--model", default=None, help="body.model [default: DROPBATCH_MODEL_NAME].")
@click.option("--max-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=Path("-"),
              help="Where to write the JSONL [default: stdout].")
@click.pass_obj
def sample_command(
    state: State, count: int, endpoint: str, model: str | None, max_tokens: int, seed: int, output: Path, as_json: bool
) -> None:
    """Write a sample batch: COUNT request lines with short, varied prompts, temperature 0."""
    to_stdout = str(output) == "-"
    if to_stdout and as_json:
        raise click.UsageError("--json prints a summary on stdout; write the lines with -o FILE")
    model = model or state.settings.engine.model_name
    digest = hashlib.sha256()
    size = 0
    with click.open_file(str(output), "wb") as out:
        for line in sample_lines(count, endpoint=endpoint, model=model, max_tokens=max_tokens, seed=seed):
            data = json.dumps(line, separators=(",", ":")).encode() + b"\n"
            out.write(data)
            digest.update(data)
            size += len(data)
    if to_stdout:
        return
    payload = {
        "path": str(output), "lines": count, "bytes": size, "sha256": digest.hexdigest(),
        "endpoint": endpoint, "model": model,
    }
    emit(as_json, payload, f"wrote {count} {endpoint} requests for model {model} to {output}")


COMMANDS = (manifest_group, submit_command, sample_command)
