"""The invariant under other dialects and settings: CUP, STAN rewrite, graceful restarts."""

from __future__ import annotations

import asyncio

from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalClient, TerminalFleet
from gateway.wire.codec import Message

from .harness import Stack, StackFactory, auth, events

FAULTS = FaultRates(drop_rate=0.05, late_rate=0.05, late=0.8, delay_rate=0.05, delay=0.1)


async def run_fleet(stack, dialect: str, **options):  # type: ignore[no-untyped-def]
    fleet = TerminalFleet(
        "127.0.0.1",
        stack.port,
        dialect,
        terminals=6,
        count=300,
        rate=300,
        seed=21,
        **{"timeout": 2.0, **options},
    )
    return await fleet.run()


async def test_cup_terminals_that_reverse_on_their_own(make_stack: StackFactory) -> None:
    """CUP: same-STAN reversals without DE 90, from the gateway and from the terminals."""
    # Terminals that give up (0.6 s) before the gateway does (1.5 s) send their own 0400.
    stack = await make_stack(dialect="cup-pos", faults=FAULTS, **{"acquirer.timeout": 1.5})
    await stack.links_up()
    results = await run_fleet(stack, "cup-pos", reverse_on_timeout=True, timeout=0.6)
    await stack.settle(
        lambda: check(stack.simulator.ledger, results.records).ok,
        timeout=15,
        what="the ledger to match what terminals were told",
    )
    summary = stack.simulator.ledger.summary()
    assert summary["reversed_twice"] == 0 and summary["released"] > 0
    assert results.summary()["terminal_reversals"]  # the terminals did send their own
    assert stack.requests_seen("0400") > 0


async def test_stan_rewrite_keeps_the_invariant(make_stack: StackFactory) -> None:
    stack = await make_stack(faults=FAULTS, **{"acquirer.stan_mode": "rewrite"})
    await stack.links_up()
    results = await run_fleet(stack, "iso87-binary")
    # The host sees the gateway's STANs: match holds to terminals on DE 37 instead.
    match_on = ("mti", "terminal_id", "transmission_time", "amount", "rrn")
    await stack.settle(
        lambda: check(stack.simulator.ledger, results.records, match_on).ok,
        timeout=15,
        what="the ledger to match what terminals were told",
    )
    host_stans = {hold.key.stan for hold in stack.holds()}
    told_stans = {record.key.stan for record in results.records}
    assert host_stans - told_stans, "the acquirer saw the terminals' own STANs"


async def _one_slow_request_upstream(
    make_stack: StackFactory, *, delay: float, grace: float
) -> tuple[Stack, TerminalClient, asyncio.Task[Message | None]]:
    """A gateway whose acquirer answers its first 0200 after ``delay`` seconds, and that 0200
    on its way: the stack, the terminal, and the task awaiting its answer."""
    rules = [Rule(mti=frozenset({"0200"}), fault="delay", seconds=delay, times=1)]
    stack = await make_stack(
        rules=rules, **{"acquirer.timeout": 5.0, "gateway.shutdown_grace": grace}
    )
    await stack.links_up()
    terminal = await stack.terminal()
    sending = asyncio.create_task(terminal.send("0200", auth(50), timeout=3.0))
    await stack.settle(lambda: stack.requests_seen("0200") == 1, what="the request upstream")
    return stack, terminal, sending


async def test_graceful_restart_reverses_what_was_in_flight(make_stack: StackFactory) -> None:
    stack, _, sending = await _one_slow_request_upstream(make_stack, delay=1.0, grace=0.2)
    stopped_events = events(stack)
    await stack.restart_gateway()  # SIGTERM-like: grace 0.2 s, then stop with it in flight
    answer = await sending  # declined at the end of the grace, not left without an answer
    assert answer is not None and answer.get("39") == "91"
    assert "reversal_owed" in stopped_events.kinds()
    await stack.links_up()
    # Reversed before the links stopped, or by the restarted gateway: released once.
    await stack.settle(lambda: any(h.released for h in stack.holds()), what="the release")
    await stack.no_reversals_open()
    holds = stack.holds()
    assert len(holds) == 1 and holds[0].released and holds[0].duplicate_reversals == 0


async def test_requests_during_the_shutdown_grace_are_declined_not_forwarded(
    make_stack: StackFactory,
) -> None:
    stack, terminal, slow = await _one_slow_request_upstream(make_stack, delay=1.5, grace=1.0)
    stopping = asyncio.create_task(stack.service.shutdown())
    await asyncio.sleep(0.1)  # in the grace period now
    late = await terminal.send("0200", auth(61), timeout=0.5)
    assert late is not None and late.get("39") == "91"
    assert stack.requests_seen("0200") == 1  # never forwarded
    await stopping
    first = await slow
    assert first is not None and first.get("39") == "91"  # declined as the grace ran out
    outcomes = [d["outcome"] for k, d in events(stack).events if k == "transaction_completed"]
    assert sorted(outcomes) == ["shutting_down", "timeout"]


async def test_stan_rewrite_resumes_past_its_stans_after_a_restart(
    make_stack: StackFactory,
) -> None:
    """The acquirer matches on the gateway's STANs: a restarted gateway must not send one it
    sent before (once, the allocator restarted from the clock: one a second, behind)."""
    stack = await make_stack(**{"acquirer.stan_mode": "rewrite"})
    await stack.links_up()
    terminal = await stack.terminal()
    for stan in range(1, 6):
        assert (await terminal.send("0200", auth(stan))).get("39") == "00"  # type: ignore[union-attr]
    before = {hold.key.stan for hold in stack.holds()}
    await stack.restart_gateway()
    await stack.links_up()
    terminal = await stack.terminal()
    for stan in range(6, 11):
        assert (await terminal.send("0200", auth(stan))).get("39") == "00"  # type: ignore[union-attr]
    # Reused STANs would have been taken by the host for resends of the first five.
    after = {hold.key.stan for hold in stack.holds()} - before
    assert len(before) == 5 and len(after) == 5, "a restarted gateway sent its STANs again"
