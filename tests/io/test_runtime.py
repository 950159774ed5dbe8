"""The collector policy (gateway/io/runtime.py) and what it relies on: the transaction path
makes no reference cycles, so freezing what survives a young pass leaks nothing."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from gateway.sim.rules import Rule
from gateway.wire.framing import Frame, encode_frame
from tests.e2e.harness import StackFactory, auth


def test_survivors_of_a_young_pass_are_frozen_and_young_garbage_is_collected() -> None:
    # In a child process: freezing the test runner's own heap would outlive this test.
    script = textwrap.dedent(
        """
        import asyncio, gc
        import uvloop
        from gateway.io.runtime import YOUNG_THRESHOLD, tune_gc, untune_gc

        async def tuned():
            tune_gc()
            frozen = bool(gc.callbacks)
            untune_gc()
            return frozen

        assert uvloop.run(tuned()), "on uvloop survivors are frozen"
        assert not asyncio.run(tuned()), "on asyncio they are not: its transports make cycles"

        tune_gc(freeze_survivors=True)
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        at_start = gc.get_freeze_count()
        assert at_start > 1000 and gc.get_count()[0] < 50  # start-up is frozen

        kept = [[n] for n in range(5000)]  # lingering requests, say
        while gc.get_freeze_count() < at_start + 5000:  # young passes run on their own
            garbage = []
            garbage.append(garbage)  # a cycle dropped before its young pass
            del garbage
        assert not gc.get_objects(1) and not gc.get_objects(2), "older generations stay empty"

        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect(0) >= 1, "young garbage is still collected"

        tune_gc(freeze_survivors=True)
        assert len(gc.callbacks) == 1, "tuning twice adds one callback"
        untune_gc()
        assert gc.callbacks == [] and gc.get_threshold() == (700, 10, 10)
        print(len(kept))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5000"


def test_young_passes_run_on_a_timer_when_frees_keep_the_count_down() -> None:
    """The steady state of a full duplicate window: old requests (frozen) are freed as fast
    as new ones are made. CPython's count (made minus freed) then stays under the threshold,
    and without the timer the young generation would grow until a pass of many ms."""
    script = textwrap.dedent(
        """
        import asyncio, gc, sys
        import uvloop
        from gateway.io import runtime
        from gateway.io.runtime import YOUNG_PASS_SECONDS, YOUNG_THRESHOLD, tune_gc, untune_gc

        async def main():
            tune_gc()
            old = [[n] for n in range(20000)]
            gc.collect(0)  # the window's requests, frozen
            new = []
            for n in range(20000):
                new.append([n])
                old.pop()
            if sys.version_info < (3, 14):  # CPython's count as 3.11-3.13 keep it
                assert gc.get_count()[0] < YOUNG_THRESHOLD, gc.get_count()
                assert len(gc.get_objects(0)) > 20000, "no pass of CPython's own yet"
            await asyncio.sleep(YOUNG_PASS_SECONDS * 5)
            young = len(gc.get_objects(0))
            assert young < 1000, f"{young} objects still young"
            untune_gc()
            assert runtime._YoungPasses.handle is None, "untune_gc stops the timer"
            return len(new)

        print(uvloop.run(main()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "20000"


@pytest.fixture
def cycles_kept() -> Iterator[list[object]]:
    """Cyclic garbage made while the test runs, kept for inspection instead of freed."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def _ours(garbage: list[object]) -> list[str]:
    """Type names of the gateway's own objects among the garbage."""
    names = {f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage}
    return sorted(name for name in names if name.startswith("gateway."))


async def test_the_transaction_path_makes_no_reference_cycles(
    make_stack: StackFactory, cycles_kept: list[object]
) -> None:
    stack = await make_stack(
        rules=[Rule(mti=frozenset({"0200"}), fault="drop", times=2)],
        **{"duplicates.window": 0.2},
    )
    await stack.links_up()
    gc.collect()  # start-up's own garbage is not the question
    gc.garbage.clear()

    terminal = await stack.terminal()
    for stan in range(1, 4):  # two timeouts (declined and reversed), then an approval
        assert await terminal.send("0200", auth(stan)) is not None
    assert await terminal.send("0200", auth(3)) is not None  # a duplicate, from the cache
    await stack.acknowledged(2)

    leaving = await stack.terminal()  # hangs up before its answer: undeliverable, reversed
    leaving.send_frame(Frame(stack.service.codec.encode("0200", auth(4))))
    await leaving.close()
    bad = await stack.terminal()  # a frame that does not decode
    bad.send_raw(encode_frame(stack.service.dialect.framing, Frame(b"\x02\x00garbage")))
    await bad.close()
    await terminal.close()

    await stack.acknowledged(3)
    await asyncio.sleep(0.5)  # past the duplicate window: every request is forgotten
    await stack.settle(lambda: stack.service.status()["lingering"] == 0, what="requests forgotten")

    gc.collect()
    assert _ours(gc.garbage) == [], "reference cycles on the transaction path"
