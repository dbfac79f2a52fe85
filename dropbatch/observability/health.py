"""Liveness, readiness and /metrics for the watcher and runner (the gateway serves its own).

``/health`` answers 200 ``{"status": "healthy"}`` while the process serves
(liveness), and nothing more. ``/ready`` runs every component check and answers
200 ``{"status": "ready"}`` or 503 ``{"status": "unavailable"}``, both with each
component's state; a down component's reason names its role (``the control
bucket is missing``), never an endpoint or a bucket: the details go to the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dropbatch.errors import DropbatchError, ObjectNotFound
from dropbatch.observability.metrics import Metrics
from dropbatch.storage.base import ObjectStore

log = logging.getLogger("dropbatch.health")

Check = Callable[[], str | None]  # None when healthy, else why not (no endpoint or bucket name: it is public)


CHECK_SECONDS = 5.0  # a probe waits no longer: S3's own retries and timeouts took 70-150 s to say it was down


@dataclass
class Health:
    """Component checks for ``/ready``: run side by side, each given ``timeout`` seconds to answer.

    A check still running from an earlier report is waited on again rather than started twice, so an
    outage that hangs the checks never piles up threads, however often ``/ready`` is asked.
    """

    service: str
    checks: dict[str, Check] = field(default_factory=dict)
    timeout: float = CHECK_SECONDS
    _running: dict[str, Future[str | None]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def _start(self, name: str, check: Check) -> Future[str | None]:
        with self._lock:
            future = self._running.get(name)
            if future is None or future.done():
                future = self._running[name] = Future()
                threading.Thread(target=_settle, args=(check, future), name=f"check-{name}", daemon=True).start()
            return future

    def report(self) -> tuple[bool, dict]:
        futures = {name: self._start(name, check) for name, check in self.checks.items()}
        deadline = time.monotonic() + self.timeout
        components = {}
        for name, future in futures.items():
            try:
                problem = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("health check timed out", extra={"component": name, "seconds": self.timeout})
                problem = f"no answer within {self.timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - a check must report, never crash the endpoint
                log.warning("health check failed", extra={"component": name, "error": f"{type(exc).__name__}: {exc}"})
                problem = f"the check failed ({type(exc).__name__}; see the {self.service}'s log)"
            components[name] = {"status": "ok"} if problem is None else {"status": "down", "reason": problem}
        ready = all(c["status"] == "ok" for c in components.values())
        return ready, {"status": "ready" if ready else "unavailable", "components": components}


def _settle(check: Check, future: Future[str | None]) -> None:
    try:
        future.set_result(check())
    except Exception as exc:  # noqa: BLE001 - reported by Health.report
        future.set_exception(exc)


def buckets_check(store: ObjectStore, buckets: Mapping[str, str]) -> Check:
    """S3 reachable and every bucket present; ``buckets`` maps each role (``inbox``, ...) to its bucket."""

    def check() -> str | None:
        for role, bucket in buckets.items():
            try:
                next(iter(store.list(bucket, "__dropbatch_health__/")), None)
            except DropbatchError as exc:
                log.warning("bucket not usable", extra={"bucket": bucket, "error": exc.message})
                return f"the {role} bucket is {'missing' if isinstance(exc, ObjectNotFound) else 'unreachable'}"
        return None

    return check


class ServiceHttp:
    """A small threaded HTTP server: /metrics, /health, /ready."""

    def __init__(self, host: str, port: int, health: Health, metrics: Metrics) -> None:
        self.health = health
        self.metrics = metrics
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(outer.metrics.registry), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    self._send(200, b'{"status": "healthy"}', "application/json")
                elif path == "/ready":
                    ready, body = outer.health.report()
                    self._send(200 if ready else 503, json.dumps(body).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"{health.service}-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> ServiceHttp:
        self._thread.start()
        log.info("serving /metrics /health /ready", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def observed(service: str, host: str, port: int, checks: dict[str, Check]) -> Iterator[tuple[Metrics, Health, int]]:
    """A service's Metrics and Health, served on ``host:port`` while the block runs.

    Yields (metrics, health, bound port); ``health.add`` may add checks later (the
    runner adds its Ray check once the engine has started).
    """
    metrics = Metrics(service)
    health = Health(service)
    for name, check in checks.items():
        health.add(name, check)
    http = ServiceHttp(host, port, health, metrics).start()
    try:
        yield metrics, health, http.port
    finally:
        http.stop()
