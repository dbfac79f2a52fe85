"""What a warm engine leaves on its node: vLLM processes that outlived their Ray actor, and vLLM's sockets.

vLLM binds its ZMQ sockets as files in ``VLLM_RPC_BASE_PATH`` (the temp directory by
default) and leaves them there when it stops (7 for an engine here, killed or not). Each
engine actor gives vLLM a directory of its own, named for the runner's session and the
actor, and removes it when vLLM stops; a restarted actor removes what the killed one left,
and the runner removes its session's directories on the way out.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path

SESSION_VAR = "DROPBATCH_ENGINE_SESSION"
SOCKETS_PREFIX = "dropbatch-vllm-"


def socket_dir(session: str, engine: str) -> str:
    """A new directory for the sockets of ``engine`` (an actor name), after removing what a killed one left."""
    remove_socket_dirs(session, engine)
    return tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{session}-{_tag(engine)}-")


def remove_socket_dirs(session: str, engine: str = "") -> int:
    """Remove the socket directories of ``session`` on this node (of one ``engine`` if named)."""
    pattern = f"{SOCKETS_PREFIX}{session}-{_tag(engine) + '-' if engine else ''}*"
    paths = list(Path(tempfile.gettempdir()).glob(pattern))
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return len(paths)


def _tag(engine: str) -> str:
    # Actor names hold the model's name; a socket's whole path must stay under 108 bytes.
    return hashlib.sha256(engine.encode()).hexdigest()[:10]


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
