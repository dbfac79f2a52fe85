"""`dropbatch up`: the whole local stack as one process tree in the foreground.

    dropbatch up
    ├── python -m moto.server -H 127.0.0.1 -p 4566   (only without DROPBATCH_S3_ENDPOINT)
    ├── dropbatch watcher
    ├── dropbatch runner
    └── dropbatch gateway

Each child runs in its own process group, so a Ctrl-C reaches only this process,
which then stops the services first and the S3 server last (they need it to shut
down cleanly). Children also get SIGTERM if this process dies without cleaning up
(Linux ``PR_SET_PDEATHSIG``). ``<home>/up.json`` says where everything is once
the services are started; scripts wait for its ``"ready": true``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dropbatch.cli.common import emit, s3_uri
from dropbatch.engine.tinymodel import TINY_EMBED_MODELS, TINY_MODELS
from dropbatch.errors import ConfigError, DropbatchError, StorageUnavailable
from dropbatch.settings import EngineSettings, Settings

log = logging.getLogger("dropbatch.up")

MOTO_HOST = "127.0.0.1"
MOTO_PORT = 4566
STOP_GRACE_SECONDS = 15.0
SERVICES = ("watcher", "runner", "gateway")
STATE_FILE = "up.json"
_PR_SET_PDEATHSIG = 1
# The file descriptor, not sys.stderr: it stays the terminal (or log) even where
# sys.stderr is swapped for a buffer.
_STDERR_FD = 2


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when `dropbatch up` dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        env: Mapping[str, str],
        *,
        stdout: IO[Any] | int | None,
        stderr: IO[Any] | int | None = None,
    ) -> Child:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            process_group=0,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.info("started", extra={"child": name, "pid": process.pid})
        return cls(name, process)

    def exited(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group (e.g. engine workers)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


def port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Stack:
    """The children of one `dropbatch up`, started in order and stopped in reverse."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], stop: threading.Event) -> None:
        self.settings = settings
        self.environ = environ
        self.stop = stop
        self.home = Path(settings.service.home)
        self.s3: Child | None = None
        self.services: list[Child] = []
        self._moto_log: IO[bytes] | None = None
        self._wrote_state = False

    @property
    def state_path(self) -> Path:
        return self.home / STATE_FILE

    def check_ports(self) -> None:
        """Refuse to start when a service's port is taken, naming the setting that moves it."""
        service = self.settings.service
        for var, host, port in (
            ("DROPBATCH_GATEWAY_PORT", service.gateway_host, service.gateway_port),
            ("DROPBATCH_WATCHER_PORT", service.metrics_host, service.watcher_port),
            ("DROPBATCH_RUNNER_PORT", service.metrics_host, service.runner_port),
        ):
            if port and port_taken(host, port):
                raise ConfigError(
                    f"{host}:{port} is already in use, so `dropbatch up` cannot start its services. Stop what is "
                    f"listening there (another `dropbatch up`?), or set {var} to a free port."
                )

    def start_embedded_s3(self, *, timeout: float = 30.0) -> str:
        """Start moto on 127.0.0.1:4566 and return its URL once it accepts connections."""
        if port_taken(MOTO_HOST, MOTO_PORT):
            raise ConfigError(
                f"{MOTO_HOST}:{MOTO_PORT} is already in use, so the embedded S3 server cannot start. "
                "Stop what is listening there (another `dropbatch up`?), or set DROPBATCH_S3_ENDPOINT "
                "to use it as the S3 endpoint."
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self._moto_log = (self.home / "moto.log").open("ab")
        argv = [sys.executable, "-m", "moto.server", "-H", MOTO_HOST, "-p", str(MOTO_PORT)]
        # moto logs every request; keep that out of the services' log.
        self.s3 = Child.start("moto", argv, self.environ, stdout=self._moto_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _accepts_connections(MOTO_HOST, MOTO_PORT):
            if self.s3.exited() is not None:
                raise StorageUnavailable(
                    f"the embedded S3 server exited with code {self.s3.exited()}; see {self.home / 'moto.log'}"
                )
            if time.monotonic() > deadline:
                raise StorageUnavailable(f"the embedded S3 server did not listen on {MOTO_PORT} within {timeout:.0f} s")
            time.sleep(0.1)
        return f"http://{MOTO_HOST}:{MOTO_PORT}"

    def build_model(self) -> None:
        """Build each served model that is one of the tiny local ones (instant if already built).

        In a child process, so torch and transformers never sit in this long-lived one.
        """
        home = Path(EngineSettings().model).parent
        for weights in self.settings.engine.served.values():
            path = Path(weights)
            if path.parent != home or path.name not in TINY_MODELS:
                continue
            argv = [sys.executable, "-m", "dropbatch.engine.tinymodel", weights, "--seed", str(TINY_MODELS[path.name]),
                    *(["--embed"] if path.name in TINY_EMBED_MODELS else [])]
            log.info("checking the tiny model", extra={"model": weights})
            builder = Child.start("tinymodel", argv, self.environ, stdout=_STDERR_FD)
            while builder.exited() is None and not self.stop.wait(0.2):
                pass
            if builder.exited() is None:
                builder.kill_group()  # stopped mid-build: the marker is written last, so it is redone
                return
            if builder.exited() != 0:
                raise DropbatchError(
                    f"building the tiny model into {weights} failed (exit code {builder.exited()})",
                    code="model_build_failed",
                )

    def start_services(self) -> None:
        env = {**self.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        for name in SERVICES:
            argv = [sys.executable, "-m", "dropbatch.cli", name]
            # Children log to stderr; their stdout goes there too so ours stays clean for --json.
            self.services.append(Child.start(name, argv, env, stdout=_STDERR_FD))

    def supervise(self) -> int:
        """Wait for a stop signal (exit code 0) or a child that died (exit code 1)."""
        while not self.stop.wait(0.5):
            for child in [*self.services, *([self.s3] if self.s3 else [])]:
                code = child.exited()
                if code is not None:
                    log.error(
                        "a service exited unexpectedly; stopping everything",
                        extra={"child": child.name, "returncode": code},
                    )
                    return 1
        log.info("stopping")
        return 0

    def shutdown(self) -> None:
        """SIGTERM the services, SIGKILL what is left after the grace period, then the S3 server."""
        if self._wrote_state:
            self.state_path.unlink(missing_ok=True)
        for child in self.services:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.services:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("did not stop in time; killing it", extra={"child": child.name})
            child.kill_group()
            log.info("stopped", extra={"child": child.name, "returncode": child.process.returncode})
        if self.s3 is not None:
            self.s3.signal(signal.SIGTERM)
            try:
                self.s3.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.s3.kill_group()
            log.info("stopped", extra={"child": self.s3.name, "returncode": self.s3.process.returncode})
        if self._moto_log is not None:
            self._moto_log.close()

    def write_state(self, state: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_path)  # atomic: a script never reads half a file
        self._wrote_state = True


def describe(settings: Settings, queue_url: str, stack: Stack) -> dict[str, Any]:
    """What `dropbatch up` prints and writes to up.json."""
    storage, service = settings.storage, settings.service
    return {
        "ready": True,
        "pid": os.getpid(),
        "s3_endpoint": storage.endpoint_url,
        "embedded_s3": stack.s3 is not None,
        "region": storage.region,
        "buckets": {
            "inbox": storage.inbox_bucket,
            "outbox": storage.outbox_bucket,
            "control": storage.control_bucket,
        },
        "queue_url": queue_url,
        "gateway_url": f"http://{service.gateway_host}:{service.gateway_port}",
        "metrics": {
            "gateway": f"http://{service.gateway_host}:{service.gateway_port}/metrics",
            "watcher": f"http://{service.metrics_host}:{service.watcher_port}/metrics",
            "runner": f"http://{service.metrics_host}:{service.runner_port}/metrics",
        },
        "model": settings.engine.model,
        "model_name": settings.engine.model_name,
        "services": {child.name: child.process.pid for child in stack.services},
        "state_file": str(stack.state_path),
    }


def _banner(info: dict[str, Any], stack: Stack) -> str:
    s3 = info["s3_endpoint"] or "AWS"
    if info["embedded_s3"]:
        s3 += f"   (embedded moto; log {stack.home / 'moto.log'})"
    buckets = info["buckets"]
    creds = ""
    if info["embedded_s3"]:
        creds = " AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test"
    lines = [
        "dropbatch is up; Ctrl-C stops everything.",
        f"  S3 + SQS      {s3}",
        f"  inbox         {s3_uri(buckets['inbox'])}   drop <tenant>/<job>/*.jsonl, then manifest.json",
        f"  outbox        {s3_uri(buckets['outbox'])}  results: <tenant>/<sha256>/output.jsonl, errors.jsonl",
        f"  control       {s3_uri(buckets['control'])}",
        f"  intake queue  {info['queue_url']}",
        f"  gateway       {info['gateway_url']}",
        f"  metrics       {info['metrics']['watcher']}  {info['metrics']['runner']}  (+ /health, /ready)",
        f"  model         {info['model_name']}  ({info['model']})",
        f"  state file    {info['state_file']}",
    ]
    if info["s3_endpoint"]:
        lines.append(
            f"  aws CLI:      export AWS_ENDPOINT_URL={info['s3_endpoint']}{creds} AWS_DEFAULT_REGION={info['region']}"
        )
    return "\n".join(lines)


def run_stack(settings: Settings, environ: Mapping[str, str], stop: threading.Event, *, as_json: bool) -> int:
    """`dropbatch up` from start to Ctrl-C; returns the exit code."""
    from dropbatch.bootstrap import bootstrap

    stack = Stack(settings, environ, stop)
    try:
        stack.check_ports()
        if settings.storage.endpoint_url is None:
            settings = settings.with_endpoint(stack.start_embedded_s3())
            stack.settings = settings
        stack.state_path.unlink(missing_ok=True)  # a stale file from a run that was killed
        stack.build_model()
        if stop.is_set():
            return 0
        resources = bootstrap(settings.storage)
        stack.start_services()
        info = describe(settings, resources.queue_url, stack)
        stack.write_state(info)
        emit(as_json, info, _banner(info, stack))
        sys.stdout.flush()
        log.info("up", extra={"s3_endpoint": info["s3_endpoint"], "gateway_url": info["gateway_url"]})
        return stack.supervise()
    finally:
        stack.shutdown()
