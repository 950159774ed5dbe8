"""Process settings for long-running services: the gateway and the simulators.

CPython's cyclic garbage collector traverses every container object that survives a young
pass again in each older pass. A gateway keeps each request for the duplicate window (60 s):
about ten containers per request (the request, its authorization, the cached answer, index
lists). With CPython's generational passes that heap is walked again and again: measured at
3,000/s on 2 cores, a middle pass over the lingering requests stopped the event loop for
590 ms, and a young pass with a high threshold for 30 ms every few seconds.

``tune_gc()`` makes every object the collector ever looks at be looked at once:

- everything alive after start-up (imports, configuration, the recovered journal state) is
  moved out of the collector's sight (``gc.freeze()``);
- after each young pass (every 700 new containers, CPython's default: a pass takes ~0.2 ms),
  whatever survived it is frozen too, so the older generations stay empty and no pass ever
  walks the lingering requests. Frozen objects are still freed by reference counting as usual
  when the gateway lets go of them.
- a young pass also runs every ``YOUNG_PASS_SECONDS`` on the serving loop. CPython (3.11) counts
  the young generation as containers made minus containers freed, frozen ones included: once
  the duplicate window is full, the gateway frees old requests as fast as it makes new ones,
  the count hovers near zero, and passes come only when it drifts to 700, seconds apart, each
  walking every request made since: 3-12 ms at 1,000/s, most of the p99 (bench/README.md). On
  a timer the young generation never holds more than that interval's survivors.

The price: a reference cycle that is still in use at its first young pass and becomes garbage
later is never collected. The transaction path makes no cycles (tests/io/test_runtime.py
drives transactions, timeouts, reversals and closed connections through a gateway and finds
none), and neither do uvloop's transports; so what could leak is what rare paths build.
``iso_gateway_gc_frozen_objects`` shows the frozen heap: it follows the traffic and the
duplicate window, and must not only grow. Measured at saturation (bench/README.md): the
longest collector pause 590 -> 4.5 ms, the collector's CPU -60%.

On plain asyncio (no uvloop, e.g. on Windows) survivors are not frozen: each of asyncio's
socket transports holds a reference cycle that only the collector frees, so every closed
connection would leak. CPython's generational passes stay, with start-up frozen.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # optional (not on Windows): plain asyncio works, slower
    uvloop = None  # type: ignore[assignment]

_T = TypeVar("_T")

# Young passes as often as CPython's default: short pauses, each object walked once.
YOUNG_THRESHOLD = 700
# And at least this often, whatever the count says (see the module docstring): 20 ms of
# survivors is ~200 containers at 1,000 requests/s (~0.05 ms to walk), ~2,000 at 10,000/s.
YOUNG_PASS_SECONDS = 0.02


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """Run a service's main coroutine on uvloop when it is installed, else on asyncio."""
    if uvloop is None:
        return asyncio.run(main)
    return uvloop.run(main)


def tune_gc(*, freeze_survivors: bool | None = None) -> None:
    """Call once start-up is done, before serving traffic, on the loop that serves it.

    ``freeze_survivors`` defaults to whether that loop is uvloop's (see the module docstring).
    With survivors frozen, young passes also run on that loop every ``YOUNG_PASS_SECONDS``
    (none when called outside a running loop).
    """
    loop = _running_loop()
    if freeze_survivors is None:
        freeze_survivors = loop is not None and type(loop).__module__.startswith("uvloop")
    gc.collect()
    gc.freeze()
    # With survivors frozen the older generations stay empty, so their thresholds do not
    # matter: CPython's defaults either way.
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
    if freeze_survivors and _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)
    if freeze_survivors and loop is not None:
        _YoungPasses.start(loop)


def untune_gc() -> None:
    """Back to CPython's collector (for tests and embedding; frozen objects stay frozen)."""
    if _freeze_survivors in gc.callbacks:
        gc.callbacks.remove(_freeze_survivors)
    gc.set_threshold(700, 10, 10)
    _YoungPasses.stop()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _YoungPasses:
    """The timer of the young passes: one per process, as the collector is."""

    handle: asyncio.TimerHandle | None = None

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop) -> None:
        cls.stop()
        cls._pass(loop)

    @classmethod
    def _pass(cls, loop: asyncio.AbstractEventLoop) -> None:
        if gc.isenabled():  # gc.disable() (a test, a profiler) is respected
            gc.collect(0)  # its survivors are frozen by _freeze_survivors
        cls.handle = loop.call_later(YOUNG_PASS_SECONDS, cls._pass, loop)

    @classmethod
    def stop(cls) -> None:
        if cls.handle is not None:
            cls.handle.cancel()
            cls.handle = None


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    # "stop": the pass is over and its survivors sit in the older generations.
    if phase == "stop":
        gc.freeze()
