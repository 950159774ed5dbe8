"""A fleet of terminals against the simulator, judged by the invariant checker.

Without a gateway in between nothing reverses a dropped approval, so the checker must report
every one of them: that proves it can fail.
"""

from __future__ import annotations

import asyncio
import socket

from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import FleetResults, Outcome, TerminalFleet, format_summary
from gateway.wire.dialect import Dialect


async def run_fleet(sim: AcquirerSimulator, **options: object) -> FleetResults:
    settings: dict[str, object] = {"terminals": 4, "count": 80, "seed": 11, "timeout": 5.0}
    settings.update(options)
    fleet = TerminalFleet(sim.host, sim.port, sim.dialect, **settings)  # type: ignore[arg-type]
    return await fleet.run()


async def test_lock_step_traffic_is_all_approved_and_matches_the_ledger(
    acquirer: AcquirerSimulator,
) -> None:
    results = await run_fleet(acquirer)

    assert len(results.records) == 80
    assert {record.outcome for record in results.records} == {Outcome.APPROVED}
    assert {record.terminal_id for record in results.records} == {
        "TERM0001", "TERM0002", "TERM0003", "TERM0004",
    }  # fmt: skip
    summary = results.summary()
    assert (summary["sent"], summary["approved"], summary["no_answer"]) == (80, 80, 0)
    assert summary["latency_ms"]["p50"] is not None
    assert acquirer.ledger.summary()["approved"] == 80
    violations = check(acquirer.ledger, results.records)
    assert violations.ok, violations.describe()


async def test_pipelined_answers_reach_the_request_they_answer(acquirer: AcquirerSimulator) -> None:
    results = await run_fleet(acquirer, terminals=3, count=300, pipeline=8)

    holds = {hold.key: hold for hold in acquirer.ledger.holds}
    assert len(holds) == 300
    for record in results.records:
        assert record.outcome is Outcome.APPROVED
        # The approval code the terminal got is the one the host gave that very request.
        assert holds[record.key].approval_code == record.approval_code
    stans = [(record.terminal_id, record.stan) for record in results.records]
    assert len(set(stans)) == len(stans)


async def test_dropped_approvals_are_holds_the_checker_reports(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, faults=FaultRates(drop_rate=0.2), seed=5)
    await sim.start()
    try:
        results = await run_fleet(sim, count=100, pipeline=4, timeout=1.0)
    finally:
        await sim.stop()

    no_answer = results.by_outcome(Outcome.NO_ANSWER)
    assert len(no_answer) == sim.counters.faults["drop"] > 0
    assert all(record.no_answer_reason == "timeout" for record in no_answer)
    violations = check(sim.ledger, results.records)
    assert not violations.ok
    assert {hold.key for hold in violations.unreported_holds} == {r.key for r in no_answer}
    assert not violations.reversed_twice and not violations.approvals_without_hold


async def test_declines_are_recorded_by_code(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, rules=[Rule(mti=frozenset({"0100"}), response_code="05")])
    await sim.start()
    try:
        results = await run_fleet(sim)
    finally:
        await sim.stop()
    summary = results.summary()
    authorizations = [record for record in results.records if record.mti == "0100"]
    assert authorizations
    assert summary["declined_by_code"] == {"05": len(authorizations)}
    assert summary["approved"] == 80 - len(authorizations)
    assert check(sim.ledger, results.records).ok
    assert "declined           " in format_summary(summary)


async def test_terminals_reverse_what_timed_out(iso87: Dialect, cup: Dialect) -> None:
    for dialect in (iso87, cup):
        sim = AcquirerSimulator(
            dialect,
            rules=[Rule(mti=frozenset({"0100", "0200"}), fault="drop", probability=0.2)],
            seed=2,
        )
        await sim.start()
        try:
            results = await run_fleet(
                sim, count=40, pipeline=4, timeout=1.0, reverse_on_timeout=True
            )
        finally:
            await sim.stop()
        timed_out = results.by_outcome(Outcome.NO_ANSWER)
        assert timed_out, dialect.name
        assert {record.reversal_code for record in timed_out} == {"00"}
        assert sim.ledger.summary()["reversals_released"] == len(timed_out)
        violations = check(sim.ledger, results.records)
        assert violations.ok, violations.describe()


async def test_a_closed_connection_is_no_answer_and_the_terminal_reconnects(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, rules=[Rule(mti=frozenset({"0200"}), fault="close", times=2)])
    await sim.start()
    try:
        results = await run_fleet(sim, terminals=1, count=20, timeout=5.0)
    finally:
        await sim.stop()
    lost = results.by_outcome(Outcome.NO_ANSWER)
    assert [record.no_answer_reason for record in lost] == ["connection_lost"] * 2
    assert len(results.approvals()) == 18
    assert results.summary()["connections"]["opened"] == 3


async def test_nothing_is_sent_when_nobody_listens(iso87: Dialect) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fleet = TerminalFleet("127.0.0.1", port, iso87, terminals=2, count=6, connect_retry_delay=0.0)
    results = await fleet.run()
    assert {record.outcome for record in results.records} == {Outcome.NOT_SENT}
    assert results.summary()["sent"] == 0
    assert results.summary()["connections"]["failed"] == 6


async def test_a_rate_and_progress_lines(acquirer: AcquirerSimulator) -> None:
    lines: list[str] = []
    results = await run_fleet(acquirer, count=30, rate=200.0, progress=lines.append)
    assert len(results.approvals()) == 30
    assert all("requests" in line for line in lines)


async def test_stop_ends_the_run_early(acquirer: AcquirerSimulator) -> None:
    fleet = TerminalFleet(
        acquirer.host, acquirer.port, acquirer.dialect, terminals=2, count=10_000, rate=100.0
    )
    run = asyncio.create_task(fleet.run())
    for _ in range(1000):
        if len(fleet.records) >= 5:
            break
        await asyncio.sleep(0.01)
    fleet.stop()
    results = await asyncio.wait_for(run, 30)
    assert 5 <= len(results.records) < 10_000
    assert all(record.outcome is Outcome.APPROVED for record in results.records)
