"""Last-resort cleanup of vLLM engine processes that outlived their Ray actor."""

from __future__ import annotations

import time

SESSION_VAR = "DROPBATCH_ENGINE_SESSION"


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
