"""Reversals that keep failing, the operator's `saf` commands, and a gateway killed mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import cli
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule, RuleSet
from gateway.sim.terminals import TerminalFleet

from .harness import PAN, StackFactory, auth, events


async def test_failed_reversal_then_saf_retry(make_stack: StackFactory) -> None:
    rules = [
        Rule(mti=frozenset({"0200"}), fault="drop"),
        Rule(mti=frozenset({"0400", "0401"}), response_code="96"),  # "try again later"
    ]
    stack = await make_stack(rules=rules, **{"reversal.max_attempts": 3})
    await stack.links_up()
    terminal = await stack.terminal()
    await terminal.send("0200", auth(40))
    await stack.settle(
        lambda: "reversal_failed" in events(stack).kinds(), timeout=8, what="the reversal to fail"
    )
    assert stack.requests_seen("0400") + stack.requests_seen("0401") == 3
    await stack.service.journal.flush()  # the CLI reads what is committed (within ~10 ms)
    journal = ["--journal", str(stack.journal_path)]

    async def saf(*args: str) -> Result:
        # The CLI runs its own event loop, as it does from a shell: give it a thread.
        return await asyncio.to_thread(CliRunner().invoke, cli, ["saf", *args, *journal])

    listed = await saf("list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [row["state"] for row in rows] == ["failed"]
    assert PAN not in listed.output and rows[0]["pan"].startswith(PAN[:6])
    # The acquirer is fixed; the operator puts the reversal back in the queue.
    stack.simulator.rules = RuleSet([Rule(mti=frozenset({"0200"}), fault="drop")])
    retried = await saf("retry", str(rows[0]["id"]))
    assert retried.exit_code == 0, retried.output
    await stack.acknowledged(timeout=8)
    assert stack.holds()[0].released and stack.holds()[0].duplicate_reversals == 0
    await stack.service.journal.flush()
    after = await saf("list")
    assert "no reversals owed" in after.output


async def test_after_a_restart_a_resend_of_an_in_doubt_request_is_declined_not_sent(
    make_stack: StackFactory,
) -> None:
    """The restarted gateway remembers the request of an authorization it is still reversing:
    the terminal's resend of it gets the decline and never reaches the acquirer twice."""
    rules = [
        Rule(mti=frozenset({"0200"}), fault="drop"),
        Rule(mti=frozenset({"0400", "0401"}), fault="drop"),  # the reversal stays owed
    ]
    stack = await make_stack(rules=rules)
    await stack.links_up()
    terminal = await stack.terminal()
    request = auth(61)
    first = await terminal.send("0200", request)
    assert first is not None and first.get("39") == "91"
    await stack.settle(lambda: stack.requests_seen("0400") >= 1, 5, "the reversal sent")
    await stack.restart_gateway()
    await stack.links_up()
    again = await stack.terminal()
    resent = await again.send("0200", request)
    assert resent is not None and resent.mti == "0210" and resent.get("39") == "91"
    assert resent.get("11") == request["11"]
    assert stack.requests_seen("0200") == 1
    assert ("duplicate_request", "declined") in [
        (kind, data.get("outcome")) for kind, data in events(stack).events
    ]
    stack.simulator.rules = RuleSet([Rule(mti=frozenset({"0200"}), fault="drop")])
    await stack.acknowledged(timeout=8)
    assert all(hold.duplicate_reversals == 0 for hold in stack.holds())


async def test_after_a_restart_a_resend_of_a_delivered_approval_is_approved_again_not_sent(
    make_stack: StackFactory,
) -> None:
    """The terminal missed the approval the old process delivered and resends after the
    restart. Under STAN rewrite the acquirer would take a second 0200 for a new sale: two
    holds for one purchase. The new process answers it from the journal instead."""
    stack = await make_stack(**{"acquirer.stan_mode": "rewrite"})
    await stack.links_up()
    terminal = await stack.terminal()
    request = auth(62)
    first = await terminal.send("0200", request)
    assert first is not None and first.get("39") == "00"
    await stack.restart_gateway()
    await stack.links_up()
    again = await stack.terminal()
    for mti in ("0200", "0201"):
        resent = await again.send(mti, request)
        assert resent is not None and resent.mti == "0210"
        assert [resent.get(k) for k in ("39", "38", "11", "4", "41")] == [
            "00", first.get("38"), request["11"], request["4"], request["41"],
        ]  # fmt: skip
        assert resent.get("2") is None  # a rebuilt answer carries no PAN
    assert stack.requests_seen("0200") == 1 and stack.requests_seen("0201") == 0
    assert len(stack.holds()) == 1
    assert [d.get("outcome") for k, d in events(stack).events if k == "duplicate_request"] == [
        "rebuilt",
        "rebuilt",
    ]


def test_saf_retry_needs_ids_or_all_failed(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["saf", "retry", "--journal", str(tmp_path / "j.sqlite3")])
    assert result.exit_code == 2 and "--all-failed" in result.output


def test_journal_commands_refuse_what_is_not_a_journal(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = other.read_bytes()
    for target in (other, tmp_path):  # another SQLite database; a directory
        for args in (["saf", "list"], ["saf", "retry", "1"], ["status"]):
            result = CliRunner().invoke(cli, [*args, "--journal", str(target)])
            assert result.exit_code == 1, (args, result.output)
            assert f"{target} is not a gateway journal" in result.output
            assert "Traceback" not in result.output
    assert other.read_bytes() == before  # no schema added to it
    result = CliRunner().invoke(
        cli, ["saf", "retry", "99999999999999999999", "--journal", str(other)]
    )
    assert result.exit_code == 2 and "positive numbers" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


async def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        assert process.poll() is None, "the gateway exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError("the gateway never listened")


@pytest.mark.slow
async def test_sigkill_under_load_then_restart_reverses_in_doubt(tmp_path: Path) -> None:
    faults = FaultRates(drop_rate=0.02, delay_rate=0.2, delay=0.3)
    simulator = AcquirerSimulator("iso87-binary", faults=faults, seed=3)
    await simulator.start("127.0.0.1", 0)
    port = _free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{port}"
data_dir = "{tmp_path}"
[acquirer]
addresses = ["127.0.0.1:{simulator.port}"]
timeout = 1.0
echo_interval = 0
reconnect_min = 0.05
reconnect_max = 0.2
[reversal]
timeout = 0.5
retry_delays = [0.1, 0.3]
[logging]
format = "json"
"""
    )
    log = tmp_path / "gateway.log"
    gateway = _start_gateway(config, log)
    try:
        await _wait_listening(port, gateway)
        fleet = TerminalFleet(
            "127.0.0.1",
            port,
            "iso87-binary",
            terminals=10,
            count=1500,
            rate=500,
            timeout=2.0,
            seed=9,
            connect_retry_delay=0.1,
        )
        running = asyncio.create_task(fleet.run())
        await asyncio.sleep(1.2)
        gateway.send_signal(signal.SIGKILL)  # mid-run: requests in flight, reversals owed
        gateway.wait(5)
        await asyncio.sleep(0.3)
        gateway = _start_gateway(config, log)
        results = await running
        await asyncio.sleep(0.5)

        def settled() -> bool:
            return check(simulator.ledger, results.records).ok_after_crash

        for _ in range(300):
            if settled():
                break
            await asyncio.sleep(0.05)
        violations = check(simulator.ledger, results.records)
        assert violations.ok_after_crash, violations.describe()
        assert simulator.ledger.summary()["reversed_twice"] == 0
        text = log.read_text()
        assert '"recovering"' in text  # the restart found open records in the journal
        assert PAN not in text
    finally:
        if gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(10)
        await simulator.stop()


async def test_a_request_whose_journal_commit_came_too_late_is_never_sent(
    make_stack: StackFactory,
) -> None:
    """Another process holds the journal past the acquirer timeout: the terminal is declined
    and the request must not reach the acquirer afterwards (it could be approved behind the
    terminal's back)."""
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    other = sqlite3.connect(stack.journal_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # `saf retry`, say, holding the write lock
    try:
        answer = await terminal.send("0200", auth(41), timeout=2.0)
        assert answer is not None and answer.get("39") == "91"
    finally:
        other.execute("ROLLBACK")
        other.close()
    await stack.settle(
        lambda: stack.service.counters.sends_dropped_stale == 1, what="the stale send dropped"
    )
    await stack.no_reversals_open()  # its reversal: answered "unknown original", resolved
    assert stack.requests_seen("0200") == 0
    assert stack.holds() == []


def test_a_start_that_fails_halfway_exits_with_the_reason(tmp_path: Path) -> None:
    """The listen port is taken: the links already started are stopped and the process ends
    with one line (it once hung, reconnecting to the acquirer forever, deaf to SIGTERM)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}",
             "--acquirer", "127.0.0.1:9", "--data-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert "error: cannot start:" in done.stderr and "address already in use" in done.stderr
    assert "Traceback" not in done.stderr
