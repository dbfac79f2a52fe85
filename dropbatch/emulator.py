"""A local S3/SQS server process (moto) for benchmarks, tests and scripts.

``dropbatch up`` runs its own, tied into its process-group handling
(``dropbatch/cli/stack.py``); everything else that needs a throwaway real S3
server over HTTP uses ``moto_server()``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dropbatch.errors import StorageUnavailable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def moto_server(
    *, host: str = "127.0.0.1", port: int = 0, log_path: Path | None = None, timeout: float = 30.0
) -> Iterator[str]:
    """Start ``python -m moto.server`` (a free port unless ``port``), yield its endpoint URL, stop it.

    Raises ``StorageUnavailable`` if it does not accept connections within ``timeout``.
    """
    port = port or free_port(host)
    output = log_path.open("ab") if log_path is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=output or subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    if output is not None:
        output.close()  # the child has its own copy
    try:
        deadline = time.monotonic() + timeout
        while not accepts_connections(host, port):
            if proc.poll() is not None:
                raise StorageUnavailable(f"the moto server exited with code {proc.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise StorageUnavailable(f"the moto server did not listen on {host}:{port} within {timeout:.0f} s")
            time.sleep(0.1)
        yield f"http://{host}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
