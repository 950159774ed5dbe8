"""How long each pass of the cyclic garbage collector stops the process, by bucket.

The collector runs on whichever thread allocates, the event loop's as a rule, and nothing else
runs on that loop meanwhile: a pass is latency added to every request waiting behind it. The
gateway's policy (gateway/io/runtime.py) keeps passes small; this is how operations see that it
does (``iso_gateway_gc_pause_seconds``). Timing a pass costs ~1 µs, ~50 passes a second.
"""

from __future__ import annotations

import bisect
import gc
import time
from typing import Any

# Upper bounds, seconds. A young pass of the tuned collector takes ~0.1 ms; the stalls it
# replaced took 3-12 ms (bench/README.md).
BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GcPauses:
    """Counts per bucket (the last one past ``BUCKETS[-1]``) and the sum, since install."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total_seconds = 0.0
        self._started: float | None = None

    def install(self) -> None:
        if self._on_pass not in gc.callbacks:
            gc.callbacks.append(self._on_pass)

    def uninstall(self) -> None:
        if self._on_pass in gc.callbacks:
            gc.callbacks.remove(self._on_pass)

    def _on_pass(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.record(time.perf_counter() - self._started)
            self._started = None

    def record(self, seconds: float) -> None:
        # bisect_left: a pass of exactly a bound counts under it ("le", as Prometheus reads it).
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, passes at or under it), ending with +Inf."""
        buckets: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


# One collector per process, so one record of its passes.
PAUSES = GcPauses()
