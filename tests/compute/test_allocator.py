"""The C heap helpers: freed pages really go back to the system, the service's queue hands them back when idle
and every N jobs, and bad arguments are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from agegender.compute.allocator import _glibc, limit_arenas

glibc = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc: the helpers are no-ops here")


@glibc
def test_release_free_memory_returns_freed_heap_pages_to_the_system() -> None:
    """60 MB in 100 KB blocks (below malloc's mmap threshold, so on the heap), all freed but the last, which pins
    the heap's top: glibc keeps the freed pages resident until malloc_trim. Run in a fresh process, so the test
    runner's own heap does not blur the figures."""
    code = textwrap.dedent("""
        import ctypes
        from agegender.compute.allocator import release_free_memory
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
        blocks = [libc.malloc(100_000) for _ in range(600)]
        for b in blocks:
            ctypes.memset(b, 1, 100_000)
        for b in blocks[:-1]:
            libc.free(b)
        held = rss()
        assert release_free_memory() is True
        print(held - rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 40  # MB handed back of the 60 freed


@glibc
def test_limit_arenas_takes_effect_on_glibc() -> None:
    code = "from agegender.compute.allocator import limit_arenas; print(limit_arenas(2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_limit_arenas_refuses_fewer_than_one() -> None:
    with pytest.raises(ValueError, match="arenas must be >= 1"):
        limit_arenas(0)


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_the_job_queue_releases_memory_when_idle_and_every_n_jobs_under_load() -> None:
    pytest.importorskip("fastapi", reason="the serve extras are not installed")
    from agegender.serving.jobs import JobQueue

    jobs, gate = JobQueue(workers=1, max_queue=8, release_every=3), threading.Event()
    try:
        futures = [jobs.submit(gate.wait, 30)] + [jobs.submit(lambda: None) for _ in range(5)]
        gate.set()  # six jobs queued back to back: released after the 3rd (every 3) and the 6th (idle, and 6)
        for f in futures:
            f.result(timeout=10)
        _wait_until(lambda: jobs.jobs_done == 6)  # counted just after the answers are handed over
        assert jobs.releases == 2
        jobs.submit(lambda: None).result(timeout=10)  # alone: the queue is empty after it
        _wait_until(lambda: jobs.jobs_done == 7)
        assert jobs.releases == 3
    finally:
        gate.set()
        jobs.shutdown()

    with pytest.raises(ValueError, match="release_every"):
        JobQueue(workers=1, max_queue=1, release_every=-1)
