"""The invariant, end to end: every hold left on the acquirer's ledger belongs to an approval a
terminal received, and no original is reversed twice. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio

from gateway.sim.rules import Rule

from .harness import Stack, StackFactory, auth, events


def _single_hold_released_once(stack: Stack) -> None:
    holds = stack.holds()
    assert len(holds) == 1
    assert holds[0].released, "the hold was not released"
    assert holds[0].duplicate_reversals == 0, "the original was reversed twice"


async def test_approved_and_delivered_is_never_reversed(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(1))
    assert response is not None and response.get("39") == "00"
    await asyncio.sleep(0.6)  # past the acquirer timeout: nothing may happen now
    holds = stack.holds()
    assert len(holds) == 1 and not holds[0].released
    assert stack.requests_seen("0400") == 0


async def test_acquirer_timeout_declines_and_reverses(make_stack: StackFactory) -> None:
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="drop")])
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(2))
    assert response is not None
    assert response.mti == "0210" and response.get("39") == "91"
    await stack.acknowledged()
    _single_hold_released_once(stack)


async def test_late_approval_is_never_forwarded(make_stack: StackFactory) -> None:
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="late", seconds=0.8)])
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(3))
    assert response is not None and response.get("39") == "91"
    # The late 0210 (approved) arrives at the gateway after ~0.8 s: never to the terminal.
    extra = await terminal.receive(timeout=1.2)
    assert extra is None, "a late response reached the terminal"
    await stack.acknowledged()
    _single_hold_released_once(stack)
    assert "late_response" in events(stack).kinds()


async def test_a_late_approval_is_journaled_at_once(make_stack: StackFactory) -> None:
    """Nothing waits for its record, yet it is committed at once, not with the next batch
    (journal.commit_delay): lost in a crash, a "25" to the reversal after the restart would
    look final and the hold would stay."""
    rules = [
        Rule(mti=frozenset({"0200"}), fault="late", seconds=0.8),
        Rule(mti=frozenset({"0400", "0401"}), fault="drop"),  # the reversal stays open
    ]
    stack = await make_stack(rules=rules, **{"reversal.retry_delays": [5.0]})
    stack.service.journal.commit_delay = 1.0  # type: ignore[attr-defined]
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(4))
    assert response is not None and response.get("39") == "91"
    await stack.settle(lambda: "late_response" in events(stack).kinds(), 3, "the late approval")
    journal = stack.service.journal
    target = journal.last_seq
    await stack.settle(lambda: journal.committed_seq >= target, 0.5, "its commit (not 1 s)")


async def test_late_decline_leaves_nothing_held(make_stack: StackFactory) -> None:
    rules = [Rule(mti=frozenset({"0200"}), response_code="05", fault="late", seconds=0.8)]
    stack = await make_stack(rules=rules)
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(4))
    assert response is not None and response.get("39") == "91"
    assert await terminal.receive(timeout=1.2) is None
    await stack.no_reversals_open()
    assert stack.simulator.ledger.open_holds() == []
    assert stack.holds() == []  # declined: the host never held anything


async def test_link_closed_after_send_reverses_at_once(make_stack: StackFactory) -> None:
    stack = await make_stack(
        rules=[Rule(mti=frozenset({"0200"}), fault="close", times=1)], **{"acquirer.timeout": 5.0}
    )
    await stack.links_up()
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(5), timeout=3.0)
    # Declined at once on link loss, long before the 5 s acquirer timeout.
    assert response is not None and response.get("39") == "91"
    await stack.acknowledged()
    _single_hold_released_once(stack)


async def test_terminal_gone_before_the_approval(make_stack: StackFactory) -> None:
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="delay", seconds=0.2)])
    await stack.links_up()
    terminal = await stack.terminal()
    sending = asyncio.create_task(terminal.send("0200", auth(6), timeout=0.05))
    assert await sending is None
    await terminal.close()
    await stack.acknowledged()
    _single_hold_released_once(stack)
    assert "undeliverable_response" in events(stack).kinds()


async def test_duplicate_in_flight_is_forwarded_once(make_stack: StackFactory) -> None:
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="delay", seconds=0.2)])
    await stack.links_up()
    first, second = await stack.terminal(), await stack.terminal()
    fields = auth(7)
    answers = await asyncio.gather(first.send("0200", fields), second.send("0200", fields))
    assert [a.get("39") if a else None for a in answers] == ["00", "00"]
    assert stack.requests_seen("0200") == 1
    # After the answer, within the window: the cached response is replayed.
    again = await first.send("0200", fields)
    assert again is not None and again.get("39") == "00"
    assert stack.requests_seen("0200") == 1
    holds = stack.holds()
    assert len(holds) == 1 and not holds[0].released


async def test_stan_reuse_with_another_amount_is_not_a_duplicate(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    first = await terminal.send("0200", auth(8, amount=1000))
    second = await terminal.send("0200", auth(8, amount=2500))
    assert first is not None and second is not None
    assert stack.requests_seen("0200") == 2


async def test_a_late_answer_is_not_taken_for_the_next_sale_reusing_its_stan(
    make_stack: StackFactory,
) -> None:
    """Sale A times out; the terminal's next sale B reuses A's STAN (another amount and time)
    and is in flight when A's late decline arrives. Both answers carry the same key (DE 41 +
    DE 11): only the echoed DE 7/12/13/37 tell them apart, so the gateway must read them from
    every response. B's terminal gets B's approval, never A's decline."""
    rules = [
        Rule(mti=frozenset({"0200"}), amount_min=1000, amount_max=1000, response_code="51",
             fault="late", seconds=1.3),
        Rule(mti=frozenset({"0200"}), amount_min=2500, amount_max=2500, fault="delay",
             seconds=0.5),
    ]  # fmt: skip
    stack = await make_stack(rules=rules, **{"acquirer.timeout": 1.0})
    await stack.links_up()
    terminal = await stack.terminal()
    sale_a = auth(9, amount=1000)
    first = await terminal.send("0200", sale_a)
    assert first is not None and first.get("39") == "91"
    sale_b = auth(9, amount=2500)
    assert sale_b["7"] != sale_a["7"]  # a second later
    second = await terminal.send("0200", sale_b)
    assert second is not None
    assert (second.get("39"), second.get("4")) == ("00", "000000002500")
    assert "late_response" in events(stack).kinds()


async def test_acquirer_down_at_start_declines_without_reversal(make_stack: StackFactory) -> None:
    stack = await make_stack(simulator_paused=True)
    terminal = await stack.terminal()
    response = await terminal.send("0200", auth(9), timeout=1.0)
    assert response is not None and response.get("39") == "91"
    await stack.simulator.resume()
    await stack.links_up()
    await asyncio.sleep(0.3)
    assert stack.requests_seen("0200") == 0  # never sent ...
    assert stack.requests_seen("0400") == 0  # ... so never reversed
    response = await terminal.send("0200", auth(10))
    assert response is not None and response.get("39") == "00"


async def test_unanswered_reversal_is_repeated_until_answered(make_stack: StackFactory) -> None:
    rules = [
        Rule(mti=frozenset({"0200"}), fault="drop"),
        Rule(mti=frozenset({"0400", "0401"}), fault="drop", times=2),
    ]
    stack = await make_stack(rules=rules)
    await stack.links_up()
    terminal = await stack.terminal()
    await terminal.send("0200", auth(11))
    # The host releases on the first 0400 although its answer is lost; the gateway cannot
    # know, so it repeats until an answer comes. Repeats must not count as second reversals.
    await stack.acknowledged(timeout=8)
    _single_hold_released_once(stack)
    assert stack.requests_seen("0400") == 1
    assert stack.requests_seen("0401") >= 2  # repeats carry the repeat MTI
