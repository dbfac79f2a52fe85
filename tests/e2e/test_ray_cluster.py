"""The runner as a driver on a multi-node Ray cluster (deploy/ray), proven on one machine.

`ray start --head` with zero CPUs plus a second `ray start --address` worker node
with its own resources: every Ray Data task and every warm engine replica can only be
placed on the worker node. A `dropbatch runner` attached with DROPBATCH_RAY_ADDRESS runs
real batches through it, scaling from one engine replica to two and back
(DROPBATCH_ENGINE_REPLICAS=1, DROPBATCH_ENGINE_REPLICAS_MAX=2).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from soak import default_model_only, request_lines, submit

from dropbatch.emulator import free_port
from dropbatch.models import BatchStatus
from watcher.service import Watcher

pytestmark = pytest.mark.e2e

LINES = 300


def _kill_cluster(temp_dir: str) -> None:
    """Stop only this cluster's processes (`ray stop` would kill every Ray on the machine)."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if temp_dir in cmdline or proc.environ().get("DROPBATCH_TEST_RAY_CLUSTER") == temp_dir:
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=15)


@pytest.fixture
def two_node_cluster():
    ray = str(Path(sys.executable).parent / "ray")
    temp_dir = f"/tmp/dbray-{secrets.token_hex(3)}"  # short: Ray puts unix sockets under it
    port = free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "DROPBATCH_TEST_RAY_CLUSTER": temp_dir,
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    common = ["--disable-usage-stats", f"--temp-dir={temp_dir}"]
    try:
        subprocess.run(
            [ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
             "--include-dashboard=false", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )
        subprocess.run(
            [ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=4",
             '--resources={"gpu_worker_stand_in": 1}', *common],
            env=env, check=True, capture_output=True, timeout=120,
        )
        deadline = time.monotonic() + 60
        while True:  # the worker registers with the head asynchronously
            status = subprocess.run([ray, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True,
                                    text=True, timeout=60).stdout
            if len(re.findall(r"^\s*1 node_", status, re.M)) == 2 or time.monotonic() > deadline:
                break
            time.sleep(1)
        yield f"127.0.0.1:{port}", status, env
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)  # the cluster's logs and sockets


def _wait_for_log(path: Path, text: str, runner: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert runner.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the runner log after {seconds:.0f} s"
        time.sleep(1)


def test_batches_run_on_the_worker_node_of_a_two_node_cluster_as_engines_scale(stack, two_node_cluster, tmp_path):
    """The runner attaches to the cluster with one engine replica; queued work starts a second,
    the next batch runs across both, and the second stops once the queue has not needed it."""
    address, status, env = two_node_cluster
    assert len(re.findall(r"^\s*1 node_", status, re.M)) == 2, f"expected a head and a worker node:\n{status}"
    assert "0.0/4.0 CPU" in status or "/4.0 CPU" in status, status  # the head has none: all CPUs are the worker's
    stack.ctx.tenants.create("e2e-cluster", "enterprise")
    first = submit(stack.ctx, "e2e-cluster", "cluster", request_lines(LINES, "cluster"))
    Watcher(stack.ctx).run_once()

    runner_env = {
        **env,
        **stack.settings.to_env(),
        **default_model_only(stack.settings),  # at most 2 replicas of one model: 2 of the worker's 4 CPUs
        "DROPBATCH_RAY_ADDRESS": address,
        "DROPBATCH_ENGINE_REPLICAS": "1",
        "DROPBATCH_ENGINE_REPLICAS_MAX": "2",
        "DROPBATCH_ENGINE_SCALE_LINES": str(LINES // 2),  # the first batch alone asks for both replicas
        "DROPBATCH_ENGINE_SCALE_DOWN_SECONDS": "20",
        "DROPBATCH_RUNNER_PORT": str(free_port()),
    }
    dropbatch = str(Path(sys.executable).parent / "dropbatch")
    log_path = tmp_path / "runner.log"
    with log_path.open("wb") as log:
        runner = subprocess.Popen([dropbatch, "runner"], env=runner_env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_for_log(log_path, '"engine scaled up"', runner, 600)
        second = submit(stack.ctx, "e2e-cluster", "cluster-2", request_lines(LINES, "cluster-2"))
        Watcher(stack.ctx).run_once()
        deadline = time.monotonic() + 600
        while not all(stack.ctx.batches.for_job(ref).status.is_terminal for ref in (first, second)):
            assert runner.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the batches did not finish on the cluster in 10 minutes"
            time.sleep(1)
        _wait_for_log(log_path, '"engine scaled down"', runner, 120)
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
    for ref, job in ((first, "cluster"), (second, "cluster-2")):
        record = stack.ctx.batches.for_job(ref)
        assert record.status == BatchStatus.COMPLETED
        assert (record.request_counts.completed, record.request_counts.failed) == (LINES, 0)
        out, _ = stack.ctx.store.get(stack.ctx.outbox, record.result.output_key)
        ids = sorted(json.loads(line)["custom_id"] for line in out.splitlines())
        assert ids == sorted(f"{job}-{i}" for i in range(LINES))
    log_text = log_path.read_text()
    assert "Connecting to existing Ray cluster" in log_text, "the runner attached; it did not start its own Ray"
    answered = {}
    for line in log_text.splitlines():
        if line.startswith("{") and '"engine stopping"' in line:
            entry = json.loads(line)
            answered[entry["engine"]] = entry["answered"]
    assert len(answered) == 2 and all(n > 0 for n in answered.values()), f"both replicas served lines: {answered}"
