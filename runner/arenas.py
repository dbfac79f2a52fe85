"""glibc's malloc arenas, capped in the runner's driver process.

glibc gives a thread that finds the arenas in use a new one, up to 8 per core, and memory
freed in one arena is not handed to another. The runner's driver is many threads (Ray
Data's executor, Ray's core-worker threads, lease keepers, the S3 pool), and its RSS crept
with every job: 30 jobs of 2,000 lines in a row took it 252 → 289 MiB (flat from the 16th),
all of it native, not Python's heap. Two arenas: 249 → 258 MiB, the jobs no slower
(README, "Benchmark"). An operator's ``MALLOC_ARENA_MAX`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's malloc.h
ARENAS = 2


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap this process's malloc arenas (before it starts threads); False where there is nothing to do.

    ``MALLOC_ARENA_MAX`` set in the environment is glibc's own knob and is left to rule;
    a C library without ``mallopt`` (musl, macOS) has no such arenas.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False
