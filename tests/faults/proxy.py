"""A fault-injecting HTTP reverse proxy for an S3/SQS server (test support, loopback only).

    proxy = FaultProxy(upstream="http://127.0.0.1:4566", plan=FaultPlan(rate=0.1, seed=7)).start()
    ... point boto3 / the aws CLI at proxy.url ...
    proxy.counts()   # {"slowdown": 12, "internal": 9, "reset_before": 4, ...}
    proxy.stop()

Every request is forwarded faithfully (multipart uploads, Range and conditional
headers, SQS query and JSON protocols, HEAD, keep-alive; response bodies stream
through in 64 KiB pieces, request bodies are read whole first, chunked or not, so
a fault can be chosen on their content) unless the seeded plan picks a fault:

    slowdown       503 SlowDown (an S3 XML error body; an SQS-shaped one for SQS)
    internal       500 InternalError
    reset_before   the connection is reset before the request reaches the server
    reset_after    the server did the work, then the connection is reset with no response
    reset_mid      the status and headers (and part of a body) go out, then a reset
    delay          the response is held back ``delay_seconds`` (a slow server)

Independently of ``rate``, ``drop_receive`` is the share of SQS ReceiveMessage
calls whose messages are taken from the queue (they stay in flight until their
visibility timeout, nothing is deleted) but answered as an empty receive, and
``drop_send`` the share of SendMessage calls answered with a well-formed success
without being forwarded: both are lost events. ``deny`` rules answer a fixed
permanent error (e.g. 403 AccessDenied) for matching paths, every time, and
``targeted`` faults break the next N matching requests (a scripted fault).

The RNG is seeded, so one thread issuing requests in order sees the same faults
run after run; with concurrent clients the order of requests (not the plan) varies.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_KINDS = ("slowdown", "internal", "reset_before", "reset_after", "reset_mid", "delay")
# Headers that describe one hop, not the message: never forwarded as they came.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}
_READ = 64 * 1024
_NO_FAULTS_PATH = "/moto-api/"  # the test harness's own reset calls are never broken


@dataclass(frozen=True)
class DenyRule:
    """Answer ``status``/``code`` for every request whose path (URL-decoded or not) matches ``pattern``."""

    pattern: str
    status: int = 403
    code: str = "AccessDenied"
    message: str = "Access Denied"

    def matches(self, path: str) -> bool:
        return re.search(self.pattern, path) is not None


@dataclass
class TargetedFault:
    """Inject ``kind`` into the next ``times`` requests whose method and path match (a scripted fault)."""

    kind: str
    pattern: str
    method: str | None = None
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0
            and (self.method is None or self.method == method)
            and (re.search(self.pattern, path) is not None or re.search(self.pattern, unquote(path)) is not None)
        )


@dataclass
class FaultPlan:
    """What the proxy breaks. Mutable: tests turn faults on after their setup."""

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    delay_seconds: float = 0.3
    services: tuple[str, ...] = ("s3", "sqs")  # which traffic ``rate`` applies to
    drop_receive: float = 0.0
    drop_send: float = 0.0
    deny: list[DenyRule] = field(default_factory=list)
    targeted: list[TargetedFault] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = (set(self.kinds) | {t.kind for t in self.targeted}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")


def _sqs_action(headers, body: bytes) -> str | None:
    """The SQS action of a request (JSON protocol: X-Amz-Target; query protocol: Action=)."""
    target = headers.get("x-amz-target", "")
    if target.startswith("AmazonSQS."):
        return target.split(".", 1)[1]
    content_type = headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded") and body:
        action = parse_qs(body.decode("latin-1")).get("Action")
        if action:
            return action[0]
    return None


def _s3_error(code: str, message: str, resource: str) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _Server

    # -- plumbing -------------------------------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        return  # quiet: the test output is for the tests

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset on purpose
        self._drop_upstream()  # the client's connection is gone: so is its upstream one

    def _upstream(self) -> http.client.HTTPConnection:
        conn = getattr(self, "_conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.server.upstream_host, self.server.upstream_port, timeout=120)
            self._conn = conn
        return conn

    def _drop_upstream(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)  # the CRLF after each chunk
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed front end would."""
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- requests -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def _proxy(self) -> None:
        body = self._read_body()
        plan = self.server.plan
        path = self.path
        sqs_action = _sqs_action(self.headers, body)
        service = "sqs" if sqs_action else "s3"
        self.server.count(f"requests_{service}")
        decoded = urlsplit(path).path
        for rule in plan.deny:
            if rule.matches(path) or rule.matches(unquote(decoded)):
                self.server.count("denied")
                self._send(
                    rule.status, [("Content-Type", "application/xml")], _s3_error(rule.code, rule.message, decoded)
                )
                return
        if path.startswith(_NO_FAULTS_PATH):
            self._forward(body)
            return
        if sqs_action == "SendMessage" and self.server.roll(plan.drop_send):
            self.server.count("dropped_send")
            self._fake_send(body)
            return
        fault = self.server.pick_fault(service, self.command, path)
        if fault is not None:
            self.server.count(fault)
        if fault == "slowdown":
            self._error(503, "SlowDown", "Please reduce your request rate.", service, decoded)
            return
        if fault == "internal":
            self._error(500, "InternalError", "We encountered an internal error. Please try again.", service, decoded)
            return
        if fault == "reset_before":
            self._reset()
            return
        if fault == "delay":
            time.sleep(plan.delay_seconds)
        drop_receive = sqs_action == "ReceiveMessage" and self.server.roll(plan.drop_receive)
        self._forward(body, fault=fault, drop_receive=drop_receive)

    def _error(self, status: int, code: str, message: str, service: str, resource: str) -> None:
        if service == "sqs":
            # botocore's SQS JSON protocol reads the code from this header and __type.
            payload = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
            headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-query-error", f"{code};Receiver")]
        else:
            payload = _s3_error(code, message, resource)
            headers = [("Content-Type", "application/xml")]
        self._send(status, headers, payload)

    def _fake_send(self, body: bytes) -> None:
        """A SendMessage success that was never delivered (JSON protocol; query passes through)."""
        try:
            message = json.loads(body).get("MessageBody", "")
        except ValueError:
            message = ""
        answer = {"MD5OfMessageBody": hashlib.md5(message.encode()).hexdigest(), "MessageId": str(uuid.uuid4())}
        self._send(200, [("Content-Type", "application/x-amz-json-1.0")], json.dumps(answer).encode())

    def _forward(self, body: bytes, *, fault: str | None = None, drop_receive: bool = False) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        if not body and self.command in ("GET", "HEAD", "DELETE"):
            headers.pop("Content-Length")
        for attempt in range(2):
            conn = self._upstream()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._drop_upstream()  # a stale keep-alive connection to the server: once more
                if attempt:
                    self._reset()
                    return
        if fault == "reset_after":
            response.read()
            self._reset()
            return
        reply_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        if drop_receive:
            response.read()
            self.server.count("dropped_receive")
            self._empty_receive(response.status, reply_headers)
            return
        length = response.getheader("content-length")
        if length is None or self.command == "HEAD":
            data = response.read()  # chunked from upstream (or no body): re-framed with a length
            if self.command == "HEAD" and length is not None:
                if fault == "reset_mid":
                    self._headers_then_reset(response.status, reply_headers)
                    return
                self.send_response_only(response.status)
                for name, value in reply_headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                return
            if fault == "reset_mid":
                if data:
                    self._partial(response.status, reply_headers, len(data), data[: len(data) // 2])
                else:
                    self._headers_then_reset(response.status, reply_headers)
                return
            self._send(response.status, reply_headers, data)
            return
        total = int(length)
        if fault == "reset_mid" and total == 0:
            response.read()
            self._headers_then_reset(response.status, reply_headers)
            return
        self.send_response_only(response.status)
        for name, value in reply_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if fault == "reset_mid":
            self.wfile.write(response.read(total // 2))
            response.read()
            self._reset()
            return
        while chunk := response.read(_READ):
            self.wfile.write(chunk)

    def _headers_then_reset(self, status: int, headers: list[tuple[str, str]]) -> None:
        """A response cut inside its header block (the message has no body to cut)."""
        self.send_response_only(status)
        for name, value in headers[: len(headers) // 2]:
            self.send_header(name, value)
        # Flush the status line and some headers without the blank line that ends them.
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []
        self._reset()

    def _partial(self, status: int, headers: list[tuple[str, str]], length: int, part: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(part)
        self._reset()

    def _empty_receive(self, status: int, headers: list[tuple[str, str]]) -> None:
        content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
        if status != 200:
            self._send(status, headers, b"")
            return
        if "json" in content_type:
            self._send(200, [("Content-Type", content_type)], b"{}")
        else:
            xml = (
                '<?xml version="1.0"?><ReceiveMessageResponse><ReceiveMessageResult/>'
                f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
                "</ReceiveMessageResponse>"
            )
            self._send(200, [("Content-Type", "text/xml")], xml.encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], upstream: str, plan: FaultPlan) -> None:
        super().__init__(address, _Handler)
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only fronts a loopback server")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.plan = plan
        self._lock = threading.Lock()
        self._rng = random.Random(plan.seed)
        self._counts: Counter[str] = Counter()

    def handle_error(self, request, client_address) -> None:
        self.count("proxy_errors")  # a client that hung up on us; not a test failure by itself

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def roll(self, probability: float) -> bool:
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability

    def pick_fault(self, service: str, method: str, path: str) -> str | None:
        plan = self.plan
        with self._lock:
            for target in plan.targeted:
                if target.matches(method, path):
                    target.times -= 1
                    return target.kind
        if plan.rate <= 0 or service not in plan.services or not plan.kinds:
            return None
        with self._lock:
            if self._rng.random() >= plan.rate:
                return None
            return self._rng.choice(plan.kinds)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class FaultProxy:
    """The proxy on a free 127.0.0.1 port, serving in a daemon thread."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        self.upstream = upstream
        self.plan = plan or FaultPlan()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", 0), self.upstream, self.plan)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def set(self, **changes: object) -> None:
        """Change the plan in place (``rate=0.1``, ``drop_receive=1.0``, ``deny=[...]``); reseeds on ``seed``."""
        for name, value in changes.items():
            if not hasattr(self.plan, name):
                raise AttributeError(name)
            setattr(self.plan, name, value)
        if "seed" in changes and self._server is not None:
            self._server.reseed(int(changes["seed"]))  # type: ignore[arg-type]

    def counts(self) -> dict[str, int]:
        """Injected faults and dropped events by kind, plus ``requests_s3`` / ``requests_sqs``."""
        return self._server.snapshot() if self._server is not None else {}

    def faults(self) -> dict[str, int]:
        counts = self.counts()
        return {kind: counts.get(kind, 0) for kind in FAULT_KINDS}

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
