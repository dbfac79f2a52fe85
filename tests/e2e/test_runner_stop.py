"""SIGTERM stops a busy `dropbatch runner` within 10 s: leases handed back, no vLLM process or socket left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from soak import default_model_only, request_lines, submit

from dropbatch.emulator import free_port
from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

LINES = 2000


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _left_behind(port: str) -> list[str]:
    """vLLM or Ray processes that were started for the runner on ``port`` and still run."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.environ().get("DROPBATCH_RUNNER_PORT") == port and proc.pid != os.getpid():
                found.append(" ".join(proc.info["cmdline"] or [])[:80])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _engine_session(port: str) -> str:
    """The engine session tag of the runner on ``port``, from one of its vLLM processes.

    Only vLLM's: the runner's own process shows the environment it was started with,
    which holds this test process's engine session.
    """
    from runner.engine.reap import SESSION_VAR

    for proc in psutil.process_iter(["cmdline"]):
        try:
            env = proc.environ()
            if (proc.info["cmdline"] or [""])[0].startswith("VLLM::") and env.get("DROPBATCH_RUNNER_PORT") == port:
                return env[SESSION_VAR]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError("the runner's engine processes carry no session tag")


def _sockets(directory: Path, since: float) -> list[str]:
    """Unix socket files directly in ``directory`` made at or after ``since``."""
    return sorted(p.name for p in directory.iterdir() if p.is_socket() and p.stat().st_mtime >= since)


def test_sigterm_stops_a_busy_runner_within_10_seconds(stack, tmp_path):
    stack.ctx.tenants.create("e2e-stop", "enterprise")
    ref = submit(stack.ctx, "e2e-stop", "stop", request_lines(LINES, "stop"))
    port = str(free_port())
    env = {**os.environ, **stack.settings.to_env(), **default_model_only(stack.settings), "DROPBATCH_RUNNER_PORT": port}
    dropbatch = str(Path(sys.executable).parent / "dropbatch")
    log = tmp_path / "runner.log"
    temp, started = Path(tempfile.gettempdir()), time.time() - 1
    with log.open("wb") as out:
        runner = subprocess.Popen([dropbatch, "runner"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _ready(int(port)):
            assert runner.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the runner's engine never became ready"
            time.sleep(0.5)
        session = _engine_session(port)
        own = list(temp.glob(f"dropbatch-vllm-{session}-*"))
        assert len(own) == 1 and any(p.is_socket() for p in own[0].iterdir()), "vLLM's sockets are in its own directory"
        Watcher(stack.ctx).run_once()  # admitted now, so the ready runner takes it at once
        while stack.ctx.batches.for_job(ref).request_counts.completed == 0:
            assert time.monotonic() < deadline, "the runner never made progress"
            time.sleep(0.1)
        asked = time.monotonic()
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
        took = time.monotonic() - asked
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
    assert took <= 10, f"the runner took {took:.1f} s to stop"
    time.sleep(1)
    assert _left_behind(port) == [], "no engine or Ray process outlived the runner"
    assert list(temp.glob(f"dropbatch-vllm-{session}-*")) == [], "the engine's socket directory went with it"
    assert _sockets(temp, started) == [], "vLLM left no socket file in the temp directory"
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.IN_PROGRESS and record.request_counts.completed < LINES
    stack.drain()  # the lease was handed back: the shared engine finishes the rest
    record = stack.ctx.batches.for_job(ref)
    assert record.status == BatchStatus.COMPLETED
    assert (record.request_counts.completed, record.request_counts.failed) == (LINES, 0)
