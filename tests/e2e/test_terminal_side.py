"""Terminal-initiated reversals, bad input from one terminal, and an acquirer that flaps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from gateway.io.terminals import TerminalConnection
from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalFleet
from gateway.wire.codec import Message
from gateway.wire.framing import Frame, encode_frame

from .harness import Stack, StackFactory, auth, events, now_fields


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


async def test_stan_rewrite_a_terminal_reversal_of_a_forgotten_sale_releases_its_hold(
    make_stack: StackFactory,
) -> None:
    """Under STAN rewrite the acquirer knows the sale by the gateway's STAN. Once the sale is
    forgotten (past ``duplicates.window``) the terminal's 0400 still reaches it: the gateway
    reads the sale's acquirer STAN back from the journal. Forwarded as it came (DE 90 naming
    the terminal's STAN), it would be answered "25" and the hold would stay. Across a restart
    too."""
    stack = await make_stack(**{"acquirer.stan_mode": "rewrite", "duplicates.window": 0.2})
    await stack.links_up()
    terminal = await stack.terminal()
    sales = [auth(stan) for stan in (30, 31)]
    for original in sales:
        assert (await terminal.send("0200", original)).get("39") == "00"  # type: ignore[union-attr]
    await asyncio.sleep(0.5)  # past the window: the gateway no longer remembers them
    assert stack.service.status()["lingering"] == 0
    answer = await terminal.send("0400", terminal_reversal(sales[0], 32))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    assert answer.get("11") == "000032"  # its own STAN, put back
    outcomes = [d.get("outcome") for k, d in events(stack).events if k == "terminal_reversal"]
    assert outcomes == ["forwarded"]  # as the reversal of that sale, repeated if unanswered
    assert sales[0]["2"] not in repr(events(stack).events)  # masked only
    await stack.restart_gateway()
    await stack.links_up()
    terminal = await stack.terminal()
    answer = await terminal.send("0400", terminal_reversal(sales[1], 33))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    holds = stack.holds()
    assert [(h.released, h.reversals, h.duplicate_reversals) for h in holds] == [(True, 1, 0)] * 2
    assert stack.requests_seen("0400") == 2


async def test_a_journal_lookup_still_reading_at_stop_is_dropped_cleanly(
    make_stack: StackFactory,
) -> None:
    """A terminal's reversal waits for the journal (STAN rewrite, sale forgotten) and the read
    outlasts the stop's wait for it: it is dropped, nothing reaches the stopped core or the
    closed journal, and the terminal's repeat to the next process is tied as usual."""
    stack = await make_stack(**{"acquirer.stan_mode": "rewrite", "duplicates.window": 0.2})
    await stack.links_up()
    terminal = await stack.terminal()
    original = auth(34)
    assert (await terminal.send("0200", original)).get("39") == "00"  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    journal = stack.service.journal
    read = journal.find_authorizations

    async def slow_read(terminal_id: str, stan: str) -> list[Any]:
        await asyncio.sleep(3.0)  # longer than the stop waits (LOOKUPS_AT_STOP)
        return await read(terminal_id, stan)

    journal.find_authorizations = slow_read  # type: ignore[method-assign]
    sending = asyncio.create_task(terminal.send("0400", terminal_reversal(original, 35)))
    await stack.settle(lambda: bool(stack.service._lookups), what="the journal lookup")
    lookups = list(stack.service._lookups)
    await stack.restart_gateway()
    assert all(lookup.cancelled() for lookup in lookups)
    assert stack.requests_seen("0400") == 0
    sending.cancel()
    await stack.links_up()
    again = await stack.terminal()
    answer = await again.send("0401", terminal_reversal(original, 35))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    assert [(h.released, h.reversals) for h in stack.holds()] == [(True, 1)]


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


async def test_terminal_reversal_after_the_gateways_own_and_a_restart(
    make_stack: StackFactory,
) -> None:
    """Exactly once across a restart: the restarted gateway still knows the original it
    reversed (for ``reversal.history_window``) and answers the terminal itself."""
    stack = await make_stack(rules=[Rule(mti=frozenset({"0200"}), fault="drop")])
    await stack.links_up()
    terminal = await stack.terminal()
    original = auth(26)
    assert (await terminal.send("0200", original)).get("39") == "91"  # type: ignore[union-attr]
    await stack.acknowledged()
    await terminal.close()
    await stack.restart_gateway()
    await stack.links_up()
    terminal = await stack.terminal()
    answer = await terminal.send("0400", terminal_reversal(original, 27))
    assert answer is not None and answer.mti == "0410" and answer.get("39") == "00"
    assert stack.requests_seen("0400") == 1  # only the gateway's own, before the restart
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


async def test_the_gateways_repeat_of_a_terminals_partial_reversal_keeps_all_its_fields(
    make_stack: StackFactory,
) -> None:
    """A terminal reverses part of a delivered approval: DE 95 (replacement amounts) says
    what stays. Its 0400 goes upstream as it came; unanswered, the gateway repeats it (0401)
    from the fields it kept: a repeat without DE 95 asks the acquirer to reverse the whole
    amount. Private fields (DE 48, 60-63: a CVC 2 may travel there) are not repeated."""
    rules = [Rule(mti=frozenset({"0400"}), fault="drop", times=1)]
    stack = await make_stack(rules=rules, **{"reversal.timeout": 0.3})
    await stack.links_up()
    seen: list[Message] = []
    simulator = stack.simulator
    on_frame = simulator._on_frame

    def spy(connection: Any, frame: Frame) -> None:  # what reaches the acquirer
        seen.append(simulator._codec.decode(frame.message))
        on_frame(connection, frame)

    simulator._on_frame = spy  # type: ignore[method-assign]
    terminal = await stack.terminal()
    original = auth(26, amount=5000)
    assert (await terminal.send("0200", original)).get("39") == "00"  # type: ignore[union-attr]
    partial = terminal_reversal(original, 27)
    partial["95"] = "000000003000" + "0" * 30  # 30.00 of the 50.00 stays approved
    partial["48"] = "R9203123"  # Mastercard-style DE 48: CVC 2 in sub-element 92
    answer = await terminal.send("0400", partial, timeout=5.0)
    assert answer is not None and answer.get("39") == "00"
    [first, repeat] = [m for m in seen if m.mti in ("0400", "0401")]
    assert (first.mti, repeat.mti) == ("0400", "0401")
    for name in ("4", "90", "95"):
        assert repeat.fields.get(name) == first.fields.get(name), name
    assert "48" in first.fields and "48" not in repeat.fields


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


async def _flood_until_blocked(
    stack: Stack,
) -> tuple[socket.socket, TerminalConnection, list[bytes]]:
    """A terminal that pipelines 1,500 requests and reads nothing, with 4 KB socket buffers
    on both ends, until the gateway's writes to it block; returns a second wave to send."""
    codec, framing = stack.service.codec, stack.service.dialect.framing
    flooder = socket.socket()
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.connect(("127.0.0.1", stack.port))
    flooder.setblocking(False)
    await stack.settle(lambda: len(stack.service.terminals.connections) == 1, what="accepted")
    [conn] = stack.service.terminals.connections.values()
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    waves = [
        b"".join(
            encode_frame(framing, Frame(codec.encode("0200", auth(stan, terminal="TERM0009"))))
            for stan in range(first, first + 1500)
        )
        for first in (1, 1501)
    ]
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(flooder, waves[0])
    await stack.settle(lambda: conn.write_blocked, what="its answers to pile up")
    return flooder, conn, waves[1:]


async def test_a_terminal_that_reads_nothing_is_cut_and_its_approvals_reversed(
    make_stack: StackFactory,
) -> None:
    """It pipelines approvals and never reads: the gateway stops reading from it (its own
    requests wait in TCP, not its answers in the gateway's memory), cuts it after
    write_timeout, and reverses the approvals that never left; other terminals go on."""
    stack = await make_stack(**{"gateway.write_timeout": 1.5, "acquirer.timeout": 5.0})
    await stack.links_up()
    flooder, _, waves = await _flood_until_blocked(stack)
    loop = asyncio.get_running_loop()
    seen = stack.requests_seen("0200")
    with contextlib.suppress(TimeoutError):  # TCP's buffers fill up: the gateway reads no more
        await asyncio.wait_for(loop.sock_sendall(flooder, waves[0]), 0.5)
    assert stack.requests_seen("0200") == seen, "it kept reading from a terminal that did not"

    other = await stack.terminal()  # meanwhile another terminal is served as usual
    answer = await other.send("0200", auth(1000, terminal="TERM0001"))
    assert answer is not None and answer.get("39") == "00"

    await stack.settle(lambda: stack.service.terminals.cut["write_timeout"] == 1, what="the cut")
    undeliverable = events(stack).kinds().count("undeliverable_response")
    assert undeliverable > 0
    await stack.acknowledged(undeliverable)
    holds = stack.holds()
    assert sum(hold.released for hold in holds) == undeliverable
    assert all(hold.duplicate_reversals == 0 for hold in holds)
    flooder.close()


async def test_half_frames_idle_peers_and_connections_over_the_limit(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(
        **{
            "gateway.max_connections": 2,
            # Long enough that neither is cut before the third connection is refused.
            "gateway.frame_timeout": 1.5,
            "gateway.idle_timeout": 2.0,  # > acquirer.timeout (0.4)
        }
    )
    await stack.links_up()
    server = stack.service.terminals
    half, idle = socket.socket(), socket.socket()
    for sock in (half, idle):
        sock.connect(("127.0.0.1", stack.port))
    half.sendall(b"\x00")  # one byte of a two-byte length header, then nothing
    await stack.settle(lambda: len(server.connections) == 2, what="both accepted")
    third = socket.socket()
    third.connect(("127.0.0.1", stack.port))  # over the limit: refused
    await stack.settle(lambda: server.refused == 1, what="the refusal")
    await stack.settle(lambda: server.cut["frame_timeout"] == 1, what="the half frame cut")
    await stack.settle(lambda: server.cut["idle_timeout"] == 1, what="the idle peer cut")
    # Cut: aborted at once, gone from the server once asyncio has reported the loss.
    await stack.settle(lambda: not server.connections, what="both connections gone")
    terminal = await stack.terminal()  # room again
    answer = await terminal.send("0200", auth(1))
    assert answer is not None and answer.get("39") == "00"
    for sock in (half, idle, third):
        sock.close()


async def test_shutdown_cuts_a_terminal_that_takes_nothing(make_stack: StackFactory) -> None:
    stack = await make_stack(**{"gateway.shutdown_grace": 0.2})
    await stack.links_up()
    flooder, conn, _ = await _flood_until_blocked(stack)
    await asyncio.wait_for(stack.service.shutdown(), 10)
    assert not stack.service.terminals.connections and conn.transport is None
    flooder.close()
