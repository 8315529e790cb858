"""Threads for work that releases the GIL: one long-lived pool per size, and an ordered map over it.

Decoding (PIL), resizing, onnxruntime calls and large numpy operations release the GIL, so a few threads keep
every core busy without the cost of processes (and without copying photos between them).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_threads() -> int:
    """Threads for decoding and inference: one per core, at most 4 (beyond that the GIL-held glue dominates)."""
    return max(1, min(4, os.cpu_count() or 1))


@lru_cache(maxsize=4)
def thread_pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads (one long-lived pool per size: thread start-up is paid once per
    process, not per batch). Work that runs on it and calls :func:`parallel_map` runs that inline."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="agegender-pool")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    """``[fn(x) for x in items]``, in order, on up to ``workers`` threads (default :func:`default_threads`).

    Threads pay where ``fn`` spends its time in code that releases the GIL (PIL decoding and resizing,
    onnxruntime, large numpy operations); with one item or one worker it runs in the calling thread.
    """
    items = list(items)
    workers = default_threads() if workers is None else workers
    # A pool thread waiting on its own pool could deadlock: nested calls run inline.
    nested = threading.current_thread().name.startswith("agegender-pool")
    if workers <= 1 or len(items) <= 1 or nested:
        return [fn(x) for x in items]
    return list(thread_pool(workers).map(fn, items))


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive slices of at most ``size``.

    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
