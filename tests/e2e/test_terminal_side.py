"""Terminal-initiated reversals, bad input from one terminal, and an acquirer that flaps."""

from __future__ import annotations

import asyncio

from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalFleet
from gateway.wire.framing import Frame, encode_frame

from .harness import StackFactory, auth, events, now_fields


def terminal_reversal(original: dict[str, str], stan: int) -> dict[str, str]:
    """The 0400 a terminal sends for an original it gave up on (DE 90 ties it)."""
    fields = {k: v for k, v in original.items() if k not in {"35", "52", "7", "12", "13"}}
    fields.update(now_fields())
    fields["11"] = f"{stan:06d}"
    fields["39"] = "68"
    fields["90"] = "0200" + original["11"] + original["7"] + "0" * 22
    return fields


async def test_terminal_reversal_of_a_delivered_approval(make_stack: StackFactory) -> None:
    """Nothing was owed (the approval was delivered): the terminal's 0400 goes upstream once."""
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    original = auth(20)
    assert (await terminal.send("0200", original)).get("39") == "00"  # type: ignore[union-attr]
    answer = await terminal.send("0400", terminal_reversal(original, 21))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    holds = stack.holds()
    assert len(holds) == 1 and holds[0].released and holds[0].duplicate_reversals == 0
    assert stack.requests_seen("0400") == 1


async def test_terminal_reversal_after_the_gateways_own(make_stack: StackFactory) -> None:
    """The gateway already reversed it: the terminal is answered locally, nothing upstream."""
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="drop")])
    await stack.links_up()
    terminal = await stack.terminal()
    original = auth(22)
    assert (await terminal.send("0200", original)).get("39") == "91"  # type: ignore[union-attr]
    await stack.acknowledged()
    answer = await terminal.send("0400", terminal_reversal(original, 23))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    assert stack.requests_seen("0400") == 1  # only the gateway's own
    holds = stack.holds()
    assert holds[0].released and holds[0].duplicate_reversals == 0


async def test_terminal_reversal_while_the_gateways_own_is_pending(
    make_stack: StackFactory,
) -> None:
    """They merge: one reversal upstream, and the terminal hears its outcome."""
    rules = [
        Rule(mti=frozenset({"0200"}), fault="drop"),
        Rule(mti=frozenset({"0400", "0401"}), fault="drop", times=1),
    ]
    stack = await make_stack(rules=rules, **{"reversal.retry_delays": [0.5]})
    await stack.links_up()
    terminal = await stack.terminal()
    original = auth(24)
    assert (await terminal.send("0200", original)).get("39") == "91"  # type: ignore[union-attr]
    await stack.settle(lambda: stack.requests_seen("0400") == 1, what="the gateway's 0400")
    answer = await terminal.send("0400", terminal_reversal(original, 25), timeout=5.0)
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    await stack.acknowledged()
    holds = stack.holds()
    assert holds[0].released and holds[0].duplicate_reversals == 0


async def test_reversal_of_an_unknown_original_is_forwarded(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    answer = await terminal.send("0400", terminal_reversal(auth(26), 27))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "25"
    assert stack.requests_seen("0400") == 1


async def test_garbage_from_one_terminal_disturbs_no_other(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.links_up()
    good, bad, oversized = await stack.terminal(), await stack.terminal(), await stack.terminal()
    framing = stack.service.dialect.framing
    # A well-framed message that is not ISO 8583: dropped, the connection stays usable.
    bad.send_raw(encode_frame(framing, Frame(b"\xff\x00garbage that is not an ISO message")))
    # A length header beyond the frame limit: that connection is cut, nothing else.
    oversized.send_raw(b"\xff\xff" + b"A" * 100)
    for stan in range(30, 35):
        response = await good.send("0200", auth(stan))
        assert response is not None and response.get("39") == "00"
    assert await oversized.wait_closed(timeout=2.0)
    response = await bad.send("0200", auth(35, terminal="TERM0002"))
    assert response is not None and response.get("39") == "00"
    errors = stack.service.counters.terminal_format_errors
    assert errors.get("message") == 1 and errors.get("OversizedFrame") == 1
    assert stack.service.status()["links_up"] == 1


async def test_flapping_acquirer_under_load_keeps_the_invariant(make_stack: StackFactory) -> None:
    faults = FaultRates(drop_rate=0.03, late_rate=0.03, late=0.8, delay_rate=0.05, delay=0.2)
    stack = await make_stack(faults=faults, **{"reversal.retry_delays": [0.1, 0.2, 0.4]})
    await stack.links_up()
    fleet = TerminalFleet(
        "127.0.0.1",
        stack.port,
        "iso87-binary",
        terminals=8,
        count=600,
        rate=300,
        timeout=3.0,
        seed=5,
    )

    async def flap() -> None:
        for _ in range(3):
            await asyncio.sleep(0.4)
            await stack.simulator.pause()
            await asyncio.sleep(0.3)
            await stack.simulator.resume()

    results, _ = await asyncio.gather(fleet.run(), flap())
    await stack.links_up()
    await stack.settle(
        lambda: check(stack.simulator.ledger, results.records).ok,
        timeout=15,
        what="the ledger to match what terminals were told",
    )
    summary = stack.simulator.ledger.summary()
    assert summary["reversed_twice"] == 0
    assert summary["released"] > 0  # faults happened and were reversed
    assert "acquirer_link_down" in events(stack).kinds()
