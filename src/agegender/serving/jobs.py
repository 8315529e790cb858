"""The service's work queue: a few worker threads behind a bounded queue, one request per job or several taken
together as a batch, and the heap handed back whenever the queue runs empty."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agegender.compute.runtime import release_memory


class QueueFull(Exception):
    """Every worker is busy and ``max_queue`` jobs are already waiting."""


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    batched: bool
    future: Future = field(default_factory=Future)


def _settle(future: Future, result: Any) -> None:
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class JobQueue:
    """``workers`` threads taking jobs from a queue that holds at most ``max_queue`` jobs beyond those running.

    ``submit(fn, *args)`` runs ``fn(*args)`` alone. ``submit_batched(fn, item)`` runs ``fn([item, ...])``
    together with the other items for ``fn`` that are waiting when a worker takes it, or that arrive within
    ``window_s`` after it (up to ``max_batch``): under load the queue fills while a batch runs, so batches grow
    with the load and each costs less per item. ``fn`` returns a list of one result, or one exception, per item;
    or it yields ``(index, result)`` pairs, each answering its request at once (a slow item then holds no other
    back).

    A slot is freed when its job finishes or is cancelled, not when a request gives up waiting: a timed-out job
    that already runs keeps its slot until it ends, so the bound always reflects the work really in the pool.

    Whenever the queue runs empty, and every ``release_every`` jobs under load (0: never), a worker hands
    onnxruntime's idle arena and the heap's free pages back to the system
    (:func:`agegender.compute.runtime.release_memory`), so the resident memory stays near what the work in flight
    needs.
    """

    def __init__(self, workers: int, max_queue: int, max_batch: int = 8, window_s: float = 0.005,
                 release_every: int = 25) -> None:
        if workers < 1 or max_queue < 0 or max_batch < 1 or window_s < 0 or release_every < 0:
            raise ValueError(f"need workers >= 1, max_queue >= 0, max_batch >= 1, window_s >= 0 and release_every "
                             f">= 0, got {workers}, {max_queue}, {max_batch}, {window_s} and {release_every}")
        self.capacity = workers + max_queue
        self.max_batch, self.window_s = max_batch, window_s
        self.release_every, self.jobs_done, self.releases = release_every, 0, 0
        self.in_flight = 0
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closed = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"agegender-serve-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._put(_Job(fn, args, batched=False))

    def submit_batched(self, fn: Callable[[list], list], item: Any) -> Future:
        return self._put(_Job(fn, (item,), batched=True))

    def _put(self, job: _Job) -> Future:
        with self._lock:
            if self._closed or self.in_flight >= self.capacity:
                raise QueueFull
            self.in_flight += 1
            self._jobs.append(job)
            self._arrived.notify()
        job.future.add_done_callback(self._release)
        return job.future

    def _release(self, _future: Future) -> None:
        with self._lock:
            self.in_flight -= 1

    def _next(self, fn: Callable | None = None, deadline: float = 0.0) -> _Job | None:
        """The next job to run (blocking), or with ``fn`` the next waiting batched job for ``fn`` (waiting
        until ``deadline`` for one, never past a job for something else). Cancelled jobs are dropped."""
        with self._lock:
            while True:
                if self._jobs and (fn is None or (self._jobs[0].batched and self._jobs[0].fn is fn)):
                    job = self._jobs.popleft()
                    if job.future.set_running_or_notify_cancel():
                        return job
                    continue
                timeout = None if fn is None else deadline - time.monotonic()
                if self._jobs or self._closed or (timeout is not None and timeout <= 0):
                    return None
                self._arrived.wait(timeout)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            batch = [job]
            deadline = time.monotonic() + self.window_s
            while job.batched and len(batch) < self.max_batch and (more := self._next(job.fn, deadline)):
                batch.append(more)
            answered: set[int] = set()
            try:
                results = job.fn([j.args[0] for j in batch]) if job.batched else [job.fn(*job.args)]
                for i, result in enumerate(results) if isinstance(results, list) else results:
                    _settle(batch[i].future, result)
                    answered.add(i)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting requests, as an executor does
                for i, j in enumerate(batch):
                    if i not in answered:
                        _settle(j.future, e)
            self._count_done(len(batch))

    def _count_done(self, n: int) -> None:
        with self._lock:
            before, self.jobs_done = self.jobs_done, self.jobs_done + n
            due = self.release_every > 0 and (self.in_flight == 0
                                              or before // self.release_every != self.jobs_done // self.release_every)
            self.releases += due
        if due:  # after the answers are handed over, so no request waits for it
            release_memory()

    def shutdown(self) -> None:
        """Stop the workers once their jobs end; jobs still waiting are cancelled."""
        with self._lock:
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._arrived.notify_all()
        for job in waiting:
            job.future.cancel()
