"""`dropbatch status` and `dropbatch results`: following a job and reading what it produced."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from dropbatch.cli.common import Command, State, emit, s3_uri
from dropbatch.context import Context
from dropbatch.errors import Conflict, DropbatchError, NotFound
from dropbatch.jsonl import iter_lines
from dropbatch.models import BatchRecord, BatchStatus
from dropbatch.storage.keys import JobRef

BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")

# Result lines can be long (embeddings); this only bounds a corrupt file.
MAX_RESULT_LINE_BYTES = 256 * 1024 * 1024
_WITH_RESULTS = {BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}


def status_payload(ctx: Context, record: BatchRecord) -> dict[str, Any]:
    """The OpenAI Batch fields plus where this job's results (or rejection) are."""
    result = None
    if record.result is not None:
        loc = record.result
        result = {
            **loc.model_dump(),
            "output_uri": s3_uri(loc.bucket, loc.output_key),
            "errors_uri": s3_uri(loc.bucket, loc.errors_key),
            "summary_uri": s3_uri(loc.bucket, loc.summary_key),
        }
    ref = JobRef(record.tenant, record.job)
    rejection = None
    if record.status == BatchStatus.FAILED and record.source == "dropbox":
        rejection = s3_uri(ctx.inbox, ref.rejection_key)
    refused = ctx.batches.refused_while(ref, record.id) if record.source == "dropbox" else []
    return {
        **record.openai(),
        "tenant": record.tenant,
        "job": record.job,
        "result": result,
        "cached": record.cached,
        "duplicate_lines": record.duplicate_lines,
        "warnings": [w.model_dump() for w in record.warnings],
        "rejection": rejection,
        # Newer manifests for this job refused (job_in_progress) while this batch was live.
        "refused_manifests": [
            {"manifest_sha256": r.get("manifest_sha256"), "refused_at": r.get("refused_at")} for r in refused
        ],
    }


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def status_text(payload: dict[str, Any]) -> str:
    counts = payload["request_counts"]
    lines = [
        f"{payload['tenant']}/{payload['job']}  {payload['id']}  {payload['status']}"
        + ("  (answered from an earlier identical job; the engine did not run)" if payload["cached"] else ""),
        f"  endpoint   {payload['endpoint'] or '-'}   model {payload['model'] or '-'}",
        f"  requests   {counts['total']} total, {counts['completed']} completed, {counts['failed']} failed"
        + (f" ({payload['duplicate_lines']} identical to an earlier line, answered by copy)"
           if payload.get("duplicate_lines") else ""),
        f"  window     {payload['completion_window']}, expires {_when(payload.get('expires_at'))}",
    ]
    stamps = [(name, payload.get(f"{name}_at")) for name in ("created", "in_progress", "finalizing", "completed", "failed")]
    lines.append("  times      " + ", ".join(f"{name} {_when(ts)}" for name, ts in stamps if ts))
    if payload.get("usage"):
        usage = payload["usage"]
        lines.append(f"  tokens     {usage['input_tokens']} prompt + {usage['output_tokens']} generated")
    for error in (payload.get("errors") or {}).get("data", []):
        where = f" (line {error['line']})" if error.get("line") else ""
        lines.append(f"  error      {error['code']}: {error['message']}{where}")
    for warning in payload.get("warnings") or []:
        lines.append(f"  warning    {warning['code']}: {warning['message']}")
    if payload["rejection"]:
        lines.append(f"  rejection  {payload['rejection']}")
    if refused := payload.get("refused_manifests"):
        lines.append(
            f"  refused    {len(refused)} newer manifest(s), uploaded while this batch was live, did not run "
            f"(job_in_progress), the last at {_when(refused[-1]['refused_at'])}"
        )
    if payload["result"]:
        lines.append(f"  output     {payload['result']['output_uri']}")
        lines.append(f"  errors     {payload['result']['errors_uri']}")
    return "\n".join(lines)


class _Progress:
    """A bar on a terminal; elsewhere (logs, CI) a line whenever the status or counts change."""

    def __init__(self, ref: JobRef) -> None:
        self.ref = ref
        self.tty = sys.stderr.isatty()
        self.bar: tqdm | None = None
        self.last: tuple | None = None

    def show(self, record: BatchRecord | None) -> None:
        if record is None:
            state: tuple = ("waiting for the watcher to admit it",)
        else:
            counts = record.request_counts
            state = (record.status.value, counts.completed + counts.failed, counts.total)
        if self.tty and record is not None:
            if self.bar is None:
                self.bar = tqdm(total=state[2] or None, unit="req", file=sys.stderr, dynamic_ncols=True)
            self.bar.total = state[2] or None
            self.bar.n = state[1]
            self.bar.set_description(f"{self.ref} {state[0]}", refresh=False)
            self.bar.refresh()
        elif state != self.last:
            text = state[0] if len(state) == 1 else f"{state[0]}: {state[1]}/{state[2]} requests done"
            click.echo(f"{self.ref}: {text}", err=True)
        self.last = state

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def wait_for(ctx: Context, ref: JobRef, *, timeout: float | None, interval: float) -> BatchRecord:
    """Poll the job's record until it reaches a terminal status, showing progress on stderr."""
    deadline = None if timeout is None else time.monotonic() + timeout
    progress = _Progress(ref)
    try:
        while True:
            try:
                record: BatchRecord | None = ctx.batches.for_job(ref)
            except NotFound:
                record = None  # the watcher has not admitted the job yet
            progress.show(record)
            if record is not None and record.status.is_terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                status = record.status.value if record else "not admitted"
                raise DropbatchError(f"gave up after {timeout:g} s waiting for {ref}; it is {status}", code="wait_timeout")
            time.sleep(interval)
    finally:
        progress.close()


def job_of(ctx: Context, text: str) -> JobRef:
    """``TENANT/JOB``, or ``TENANT/BATCH_ID`` for a batch made through the API (its job is named for it)."""
    ref = JobRef.parse(text)
    if BATCH_ID.fullmatch(ref.job):
        try:
            return JobRef(ref.tenant, ctx.batches.get(ref.tenant, ref.job).job)
        except NotFound:
            pass  # a drop-box job may be named like a batch id
    return ref


@click.command("status", cls=Command)
@click.argument("job_ref", metavar="TENANT/JOB|TENANT/BATCH_ID")
@click.option("--wait", is_flag=True, help="Poll until the batch is completed, failed, expired or cancelled.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="With --wait: give up after this many seconds.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="With --wait: poll period.")
@click.pass_obj
def status_command(state: State, job_ref: str, wait: bool, timeout: float | None, interval: float, as_json: bool) -> None:
    """Show the newest batch of a drop-box job (with --json: the OpenAI Batch object and result locations).

    A job runs one batch at a time: a manifest uploaded while its batch is live is
    refused (and listed here); one uploaded after it ended makes a new batch, which
    is then the one shown.
    """
    ctx = state.context
    ref = job_of(ctx, job_ref)
    record = wait_for(ctx, ref, timeout=timeout, interval=interval) if wait else ctx.batches.for_job(ref)
    payload = status_payload(ctx, record)
    emit(as_json, payload, status_text(payload))


@dataclass
class Verification:
    """Every input custom_id exactly once across output and error files, and nothing else."""

    expected: set[str]
    seen: Counter = field(default_factory=Counter)
    lines: Counter = field(default_factory=Counter)  # by file kind
    malformed: int = 0

    def add(self, kind: str, data: bytes | None) -> None:
        self.lines[kind] += 1
        try:
            custom_id = json.loads(data or b"")["custom_id"]
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return
        self.seen[custom_id] += 1

    def report(self) -> dict[str, Any]:
        missing = sorted(self.expected - self.seen.keys())
        duplicated = sorted(k for k, n in self.seen.items() if n > 1)
        unexpected = sorted(self.seen.keys() - self.expected)
        return {
            "ok": not (missing or duplicated or unexpected or self.malformed),
            "requests": len(self.expected),
            "output_lines": self.lines["output"],
            "error_lines": self.lines["errors"],
            "missing": len(missing),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "malformed": self.malformed,
            "examples": {"missing": missing[:5], "duplicated": duplicated[:5], "unexpected": unexpected[:5]},
        }


def input_custom_ids(path: Path, max_line_bytes: int) -> set[str]:
    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                yield chunk

    ids: set[str] = set()
    for raw in iter_lines(chunks(), max_line_bytes=max_line_bytes):
        try:
            ids.add(json.loads(raw.data or b"")["custom_id"])
        except (ValueError, KeyError, TypeError):
            raise click.BadParameter(f"{path} line {raw.number} is not a request line with a custom_id") from None
    return ids


def _tee(chunks: Iterable[bytes], out: Any) -> Iterator[bytes]:
    for chunk in chunks:
        if out is not None:
            out.write(chunk)
        yield chunk


@click.command("results", cls=Command)
@click.argument("job_ref", metavar="TENANT/JOB|TENANT/BATCH_ID")
@click.option(
    "--verify", "verify_input", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check every custom_id of this input file appears exactly once across output and errors.",
)
@click.pass_obj
def results_command(state: State, job_ref: str, verify_input: Path | None, as_json: bool) -> None:
    """Stream the output lines, then the error lines, as JSONL on stdout.

    With --json, print one summary object (locations, line counts, verification) instead of the lines.
    """
    ctx = state.context
    ref = job_of(ctx, job_ref)
    record = ctx.batches.for_job(ref)
    if record.result is None or record.status not in _WITH_RESULTS:
        hint = "; see `dropbatch status` for why" if record.status == BatchStatus.FAILED else "; try again when it is completed"
        raise Conflict(f"{ref} ({record.id}) is {record.status.value} and has no results{hint}", code="no_results")
    loc = record.result
    verification = Verification(input_custom_ids(verify_input, state.settings.limits.max_line_bytes)) if verify_input else None
    out = None if as_json else sys.stdout.buffer
    counts: Counter = Counter()
    for kind, key in (("output", loc.output_key), ("errors", loc.errors_key)):
        stream = _tee(ctx.store.iter_bytes(loc.bucket, key), out)
        for raw in iter_lines(stream, max_line_bytes=MAX_RESULT_LINE_BYTES):
            counts[kind] += 1
            if verification is not None:
                verification.add(kind, raw.data)
    if out is not None:
        out.flush()
    report = verification.report() if verification else None
    payload = {
        "tenant": ref.tenant,
        "job": ref.job,
        "batch_id": record.id,
        "status": record.status.value,
        "output_uri": s3_uri(loc.bucket, loc.output_key),
        "errors_uri": s3_uri(loc.bucket, loc.errors_key),
        "output_lines": counts["output"],
        "error_lines": counts["errors"],
        "verify": report,
    }
    if as_json:
        emit(True, payload, None)
    elif report is not None:
        click.echo(_verification_text(report), err=True)
    if report is not None and not report["ok"]:
        raise click.exceptions.Exit(1)


def _verification_text(report: dict[str, Any]) -> str:
    if report["ok"]:
        return (
            f"verified: all {report['requests']} requests answered exactly once "
            f"({report['output_lines']} output lines, {report['error_lines']} error lines)"
        )
    what = {
        "missing": "missing (in the input, not in the results)",
        "duplicated": "duplicated (answered more than once)",
        "unexpected": "unexpected (in the results, not in the input)",
        "malformed": "malformed result lines",
    }
    problems = [
        f"{report[name]} {what[name]}"
        + (f", e.g. {', '.join(report['examples'][name])}" if report["examples"].get(name) else "")
        for name in what
        if report[name]
    ]
    return f"verification FAILED against the input's {report['requests']} requests: " + "; ".join(problems)


COMMANDS = (status_command, results_command)
