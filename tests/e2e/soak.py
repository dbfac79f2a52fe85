"""Kill the runner with SIGKILL at random points, restart it, and check nothing is lost or doubled.

    python tests/e2e/soak.py --kills 20 [--lines 3000] [--seed 7]     (what `make soak` runs)

A real `dropbatch runner` process (real vLLM, the warm engine fed by Ray Data) works on one
batch; this script kills its whole process group (runner, Ray, vLLM: a machine
dying) at random moments — during engine start, mid-chunk, between chunks —
restarts it, and after the last restart lets it finish. Then it reads the outbox
back and tallies, per custom_id, lines lost and lines duplicated. Both must be 0.
The e2e suite runs the same campaign with a handful of kills (test_kill.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dropbatch.context import Context  # noqa: E402
from dropbatch.emulator import free_port, moto_server  # noqa: E402
from dropbatch.models import BatchRecord, BatchStatus, InputObject  # noqa: E402
from dropbatch.settings import Settings  # noqa: E402
from dropbatch.storage.keys import ControlKeys, JobRef  # noqa: E402
from manifests import Manifest, dumps, sign  # noqa: E402

MODEL = "dropbatch-tiny"


def tokens_of_line(i: int) -> int:
    """Varied lengths (16..175 tokens) so lines finish, and chunks commit, spread over the pass."""
    return 16 + (i * 37) % 160


@dataclass
class Tally:
    kills: int = 0
    restarts: int = 0
    lines: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    kill_points: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, other: Tally) -> None:
        for name in ("kills", "restarts", "lines", "lost", "duplicated", "unexpected", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kill_points += other.kill_points

    def table(self) -> str:
        rows = [
            ("kills (SIGKILL to the runner's process group)", self.kills),
            ("runner starts", self.restarts),
            ("request lines", self.lines),
            ("lines lost", self.lost),
            ("lines duplicated", self.duplicated),
            ("lines not in the input", self.unexpected),
            ("wall seconds", f"{self.seconds:.0f}"),
        ]
        return "\n".join(f"  {name:<48} {value}" for name, value in rows)


def request_lines(n: int, job: str) -> list[dict]:
    return [
        {
            "custom_id": f"{job}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"line {i} of {job}: keep talking"}],
                "max_tokens": tokens_of_line(i),
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


def submit(ctx: Context, tenant: str, job: str, lines: list[dict], *, endpoint: str = "/v1/chat/completions",
           model: str = MODEL, window: str = "24h") -> JobRef:
    """Upload the input and a signed manifest (the drop-box contract, via the S3 API)."""
    key = ctx.tenants.create_signing_key(tenant)
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    input_key = f"{tenant}/{job}/input.jsonl"
    ctx.store.put(ctx.inbox, input_key, data)
    manifest = Manifest(
        tenant=tenant, job=job, key_id=key.key_id, endpoint=endpoint, model=model, completion_window=window,
        created_at=int(time.time()), nonce=hashlib.sha256(job.encode()).hexdigest()[:24],
        inputs=[InputObject(key=input_key, size=len(data), sha256=hashlib.sha256(data).hexdigest())],
    )
    ref = JobRef(tenant, job)
    ctx.store.put(ctx.inbox, ref.manifest_key, dumps(sign(manifest, key.secret)))
    return ref


def engine_processes(session: str) -> list:
    """The vLLM processes (engine core and/or worker; titles vary by version) of one warm-engine session."""
    import psutil

    from runner.engine.reap import SESSION_VAR

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if (proc.info["cmdline"] or [""])[0].startswith("VLLM::") and proc.environ().get(SESSION_VAR) == session:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def committed_chunks(ctx: Context, batch_id: str) -> int:
    return sum(1 for _ in ctx.store.list(ctx.settings.storage.control_bucket, ControlKeys.chunk_prefix(batch_id)))


def default_model_only(settings: Settings) -> dict[str, str]:
    """Env that makes a runner subprocess serve just the default model: one engine to start, not one per model."""
    return {"DROPBATCH_MODELS": f"{settings.engine.model_name}={settings.engine.model}"}


class RunnerProcess:
    """`dropbatch runner` in its own process group, so one killpg takes Ray and vLLM with it."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.env = {**os.environ, **settings.to_env(), **default_model_only(settings),
                    "DROPBATCH_RUNNER_PORT": str(free_port())}
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        dropbatch = str(Path(sys.executable).parent / "dropbatch")
        with (self.log_dir / f"runner-{self.starts}.log").open("wb") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [dropbatch, "runner"], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _kill_strays(self.env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        _kill_strays(self.env)


def _kill_strays(env: dict[str, str]) -> None:
    """Ray can move some of its processes out of the runner's group; a dead machine loses them too."""
    import psutil

    port = env["DROPBATCH_RUNNER_PORT"]
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("DROPBATCH_RUNNER_PORT") == port and proc.pid != os.getpid():
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def kill_campaign(
    ctx: Context, settings: Settings, ref: JobRef, *, kills: int, rng: random.Random, log_dir: Path,
    finish_timeout: float = 1200.0, say=print,
) -> Tally:
    """Kill and restart the runner ``kills`` times, let it finish, and tally the outcome."""
    started = time.monotonic()
    record = ctx.batches.for_job(ref)
    total_chunks = len(record.chunks)
    tally = Tally(lines=record.request_counts.total)
    runner = RunnerProcess(settings, log_dir)
    try:
        for n in range(kills):
            runner.start()
            before = committed_chunks(ctx, record.id)
            left = total_chunks - before
            # Where to kill: during engine start-up (before any result: ray.init and the engine
            # take >15 s even on a quiet machine), or just after the next few chunks commit,
            # scaled to what is left so the later kills still land mid-run.
            if rng.random() < 0.25 or left < 2:
                point = f"start-up +{rng.uniform(3, 12):.0f}s"
                time.sleep(float(point.split("+")[1].rstrip("s")))
            else:
                step = 1 + rng.randrange(max(1, left // (2 * (kills - n))))
                target = min(total_chunks - 1, before + step)
                point = f"after chunk {target}/{total_chunks}"
                deadline = time.monotonic() + 300
                while committed_chunks(ctx, record.id) < target and time.monotonic() < deadline:
                    if runner.proc is not None and runner.proc.poll() is not None:
                        break
                    time.sleep(0.1)
                time.sleep(rng.uniform(0, 0.3))  # land mid-chunk, not just on a boundary
            if ctx.batches.get(ref.tenant, record.id).status.is_terminal:
                say(f"kill {n + 1}: batch already finished; stopping the campaign early")
                break
            runner.kill()
            tally.kills += 1
            tally.kill_points.append(point)
            say(f"kill {n + 1}/{kills} at {point}: {committed_chunks(ctx, record.id)}/{total_chunks} chunks committed")
        else:
            runner.start()  # the last restart: let it finish
        deadline = time.monotonic() + finish_timeout
        while not ctx.batches.get(ref.tenant, record.id).status.is_terminal:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the batch did not finish within {finish_timeout:.0f} s after the last restart")
            if runner.proc is not None and runner.proc.poll() is not None:
                raise RuntimeError(f"the runner exited with {runner.proc.returncode}; see {log_dir}")
            time.sleep(1)
    finally:
        runner.stop()
    tally.restarts = runner.starts
    final = ctx.batches.get(ref.tenant, record.id)
    tally.lost, tally.duplicated, tally.unexpected = exactly_once(ctx, final)
    tally.seconds = time.monotonic() - started
    return tally


def exactly_once(ctx: Context, record: BatchRecord) -> tuple[int, int, int]:
    """(lost, duplicated, unexpected) custom_ids across output.jsonl and errors.jsonl."""
    if record.status != BatchStatus.COMPLETED or record.result is None:
        return record.request_counts.total, 0, 0
    seen: Counter[str] = Counter()
    for key in (record.result.output_key, record.result.errors_key):
        data, _ = ctx.store.get(ctx.outbox, key)
        seen.update(json.loads(line)["custom_id"] for line in data.splitlines())
    expected = {f"{record.job}-{i}" for i in range(record.request_counts.total)}  # request_lines(n, job)
    lost = len(expected - set(seen))
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    unexpected = len(set(seen) - expected)
    return lost, duplicated, unexpected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lease-seconds", type=int, default=6)
    args = parser.parse_args()

    from dropbatch.bootstrap import bootstrap
    from dropbatch.engine.tinymodel import build_tiny_model

    model = REPO / ".dropbatch" / "models" / "dropbatch-tiny"
    build_tiny_model(model)
    workdir = REPO / ".dropbatch" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True)
    with moto_server(log_path=workdir / "moto.log") as endpoint:
        settings = Settings.from_env(
            {
                "DROPBATCH_S3_ENDPOINT": endpoint,
                "DROPBATCH_MODEL": str(model),
                "DROPBATCH_CHUNK_LINES": "50",
                "DROPBATCH_ENGINE_BATCH_SIZE": "16",
                "DROPBATCH_LEASE_SECONDS": str(args.lease_seconds),
                "DROPBATCH_POLL_SECONDS": "0.5",
                "DROPBATCH_HOME": str(workdir),
            }
        )
        bootstrap(settings.storage)
        ctx = Context.from_settings(settings)
        ctx.tenants.create("soak", "enterprise")
        from watcher.service import Watcher

        print(f"soak: {args.kills} kills over batches of {args.lines} lines, seed {args.seed}, logs in {workdir}")
        rng = random.Random(args.seed)
        tally = Tally()
        batch = 0
        # A batch can finish before the campaign has killed enough times: keep feeding new ones.
        while tally.kills < args.kills:
            batch += 1
            job = f"soak-{batch}"
            ref = submit(ctx, "soak", job, request_lines(args.lines, job))
            Watcher(ctx).run_once()
            one = kill_campaign(ctx, settings, ref, kills=args.kills - tally.kills, rng=rng, log_dir=workdir)
            print(f"batch {batch}: {one.kills} kills, lost {one.lost}, duplicated {one.duplicated}")
            tally.merge(one)
    print("\nsoak tally\n" + tally.table())
    ok = tally.lost == 0 and tally.duplicated == 0 and tally.unexpected == 0
    print("\nPASS: nothing lost, nothing duplicated" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
