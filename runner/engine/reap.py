"""What a warm engine leaves on its node: vLLM processes that outlived their Ray actor, and vLLM's sockets.

vLLM binds its ZMQ sockets as files in ``VLLM_RPC_BASE_PATH`` (the temp directory by
default) and leaves them there when it stops (7 for an engine here, killed or not). Each
engine actor gives vLLM a directory of its own, named for the runner's session, the
actor and the actor's process id, and removes it when vLLM stops. What a killed engine
left (a restarted actor, a runner killed with ``kill -9``) goes when the next engine
starts on that node (its process is gone), and the runner removes its session's
directories on the way out.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

SESSION_VAR = "DROPBATCH_ENGINE_SESSION"
SOCKETS_PREFIX = "dropbatch-vllm-"


def socket_dir(session: str, engine: str) -> str:
    """A new directory for the sockets of ``engine`` (an actor name) in this process, after removing orphans."""
    remove_orphaned_socket_dirs()
    return tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{session}-{_tag(engine)}-{os.getpid()}-")


def remove_socket_dirs(session: str) -> int:
    """Remove the socket directories of ``session`` on this node."""
    return _remove(p for p in _socket_dirs() if p.name.startswith(f"{SOCKETS_PREFIX}{session}-"))


def remove_orphaned_socket_dirs() -> int:
    """Remove the socket directories on this node whose engine process is gone."""
    return _remove(p for p in _socket_dirs() if not _alive(_pid_of(p.name)))


def _socket_dirs() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{SOCKETS_PREFIX}*"))


def _remove(paths: Iterable[Path]) -> int:
    removed = 0
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _pid_of(name: str) -> int | None:
    parts = name[len(SOCKETS_PREFIX):].split("-")  # session, tag, pid, mkdtemp's suffix (no dashes in any)
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True  # not a name we made: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _tag(engine: str) -> str:
    # Actor names hold the model's name; a socket's whole path must stay under 108 bytes.
    return hashlib.sha256(engine.encode()).hexdigest()[:8]


def reap_engine_processes(session: str, *, orphans_only: bool, grace_seconds: float = 5.0) -> int:
    """Kill vLLM engine processes of ``session`` that outlived their Ray actor.

    ``ray.shutdown()`` kills actors outright: their ``VLLM::EngineCore`` /
    ``VLLM::Worker`` children are re-parented to init and keep ~1.5 GB each. Only
    processes carrying this engine's session tag are touched (this machine may run
    other engines). Local processes only; on a multi-node cluster each node's
    raylet owns its workers.
    """
    import psutil

    deadline = time.monotonic() + grace_seconds
    killed = 0
    while True:
        victims = []
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            try:
                if not (proc.info["cmdline"] or [""])[0].startswith("VLLM::"):
                    continue
                if orphans_only and proc.info["ppid"] != 1:
                    continue
                if proc.environ().get(SESSION_VAR) == session:
                    victims.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not victims:
            return killed
        if not orphans_only or time.monotonic() >= deadline:
            for proc in victims:
                try:
                    proc.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(victims, timeout=10)
            return killed
        time.sleep(0.5)  # orphans often exit by themselves once their pipes close
