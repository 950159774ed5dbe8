"""The service's wake-ups for the core's timers: deadlines close together share one."""

from __future__ import annotations

import asyncio
import time

from gateway.service import TIMER_SLOT
from gateway.sim.rules import Rule
from gateway.sim.terminals import Outcome, TerminalFleet

from .harness import StackFactory, auth, events


async def test_timers_due_close_together_share_a_wake_up(make_stack: StackFactory) -> None:
    """Every answered request keeps a timer (its acquirer timeout, then the end of its duplicate
    window) that falls due at the rate requests came in. One wake-up per deadline cost more
    than the timers' own work; on a TIMER_SLOT grid a burst of them is one wake-up per slot."""
    stack = await make_stack()
    await stack.links_up()
    service = stack.service
    wake_ups: list[float] = []
    on_timer = service._on_timer

    def counted() -> None:
        wake_ups.append(time.time())
        on_timer()

    service._on_timer = counted  # type: ignore[method-assign]
    count = 400
    fleet = TerminalFleet(
        "127.0.0.1",
        stack.port,
        "iso87-binary",
        terminals=10,
        pipeline=8,
        count=count,
        rate=0,
        timeout=2.0,
        seed=31,
    )
    started = time.time()
    results = await fleet.run()
    finished = time.time()
    assert all(r.outcome is Outcome.APPROVED for r in results.records)
    timeout = stack.config.acquirer.timeout
    # Every request's acquirer timeout falls due within [started, finished] + timeout.
    await asyncio.sleep(max(0.0, finished + timeout + 0.2 - time.time()))
    in_window = [t for t in wake_ups if started + timeout <= t <= finished + timeout + TIMER_SLOT]
    slots = (finished - started) / TIMER_SLOT + 2
    assert in_window, "no timer fired"
    assert len(in_window) <= slots, (
        f"{len(in_window)} wake-ups for {count} deadlines over {finished - started:.3f} s"
    )


async def test_a_reversal_that_never_expires_survives_a_restart(make_stack: StackFactory) -> None:
    """``reversal.expiry = inf``: its timer is due at infinity while no link is up, which no
    grid can round; the gateway must still start (it failed with OverflowError)."""
    drop = Rule(mti=frozenset({"0200", "0400", "0401"}), fault="drop")
    stack = await make_stack(rules=[drop], reversal__expiry=float("inf"))
    await stack.links_up()
    terminal = await stack.terminal()
    assert (await terminal.send("0200", auth(1))).get("39") == "91"  # type: ignore[union-attr]
    await stack.settle(lambda: "reversal_sent" in events(stack).kinds(), what="reversal sent")
    await terminal.close()
    await stack.restart_gateway()
    assert stack.service.status()["reversals_owed"] == 1  # still owed, its timer armed
