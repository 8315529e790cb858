"""Short garbage-collector pauses in a server that holds many long-lived objects.

CPython's full collection examines every object it tracks, and stops the event loop while it does. In this
service most of them live long: the imports, the model, and for each open WebSocket some 85 objects of uvicorn,
websockets and the live handler that last as long as the socket. Measured on a 2-core machine with 2,000 idle
sockets open (``benchmarks/hostile.py``), one full collection took 120-170 ms, and opening the sockets brought 3 to 6
of them (CPython runs one each time the long-lived heap has grown by a quarter): every answer, ``/healthz``
included, waited behind them.

:class:`FrozenSurvivors` freezes what survives each full collection (``gc.freeze``: moved to a generation that
collections skip), so the next one examines only what was made since: 20-45 ms with the same sockets. What that
costs: a reference cycle among frozen objects is not reclaimed while they stay frozen, so every ``rescan_s`` the
next full collection examines everything again (one long pause, then frozen again). With uvloop (installed with
the service on Linux and macOS) a closed socket leaves no cycle behind; with asyncio's own event loop each leaves
five objects (its transport's bound-method cycle) until that rescan.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

RESCAN_S = 600.0
OLDEST = len(gc.get_count()) - 1  # the generation a full collection is reported as (2 in CPython)


class FrozenSurvivors:
    """While entered: the objects alive at entry, and those that survive each full collection, are frozen; the
    first full collection ``rescan_s`` seconds (by ``clock``) after the last complete one examines all of them
    again. Leaving unfreezes everything. ``full`` and ``complete`` count the full collections seen and those
    that examined everything.

    >>> FrozenSurvivors(rescan_s=0)
    Traceback (most recent call last):
    ...
    ValueError: rescan_s must be a positive number of seconds, got 0
    """

    def __init__(self, rescan_s: float = RESCAN_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < rescan_s < float("inf"):
            raise ValueError(f"rescan_s must be a positive number of seconds, got {rescan_s!r}")
        self.rescan_s, self.clock = rescan_s, clock
        self.full = self.complete = 0
        self._last_complete = clock()

    def __enter__(self) -> FrozenSurvivors:
        gc.freeze()  # what start-up made (imports, the model, the app) lives as long as the process
        self._last_complete = self.clock()
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._on_collection)
        gc.unfreeze()

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector itself, before and after each collection, when its lists are consistent:
        # moving objects between generations here changes only which ones the next examination sees.
        if info["generation"] != OLDEST:
            return
        if phase == "start":
            self.full += 1
            if self.clock() - self._last_complete >= self.rescan_s:
                gc.unfreeze()  # into the oldest generation, which this collection examines
                self.complete += 1
                self._last_complete = self.clock()
        else:
            gc.freeze()
