"""The process's C heap (glibc's malloc): fewer arenas for a long-running service, and handing freed memory back.

A service answering photos on several threads keeps what its threads' large buffers (decoded photos, the detector's
image pyramid) once used: glibc gives each thread that meets a busy heap an arena of its own, and free pages inside
a heap stay resident until ``malloc_trim``. Measured in-process on this project's 2-core machine, two threads each
having predicted astronaut.png, then 900 more photos (onnxruntime without memory patterns, one shared arena:
:func:`agegender.compute.runtime.session`): resident 190 MiB; with :func:`limit_arenas` (1) 175 MiB; with
:func:`release_free_memory` as well 145 MiB, at the same CPU time per photo. The service does both
(``agegender serve``; docs/service.md, "Service under load").

Everything here is a no-op, returning False, where the C library is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's malloc.h


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both present, or this is not glibc
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 1) -> bool:
    """Let at most ``arenas`` malloc arenas exist (call before the worker threads start: arenas already made stay).
    True where it took effect."""
    if arenas < 1:
        raise ValueError(f"arenas must be >= 1, got {arenas}")
    libc = _glibc()
    ok = libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1
    log.debug("malloc arenas limited to %d: %s", arenas, ok)
    return bool(ok)


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (``malloc_trim(0)``: a few milliseconds; pages used again
    later cost a page fault each, so call it now and then, not after every allocation). True where glibc ran it."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
