"""Process-crash safety: what a commit reported durable survives a SIGKILL of the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.core.records import AuthState, ReversalState
from gateway.journal import SqliteJournal

REPO = Path(__file__).resolve().parents[2]

# The child journals 200 authorizations and 50 reversals, waits until they are durable, says
# so, then keeps writing (snapshots of new ids and updates of old ones) until it is killed,
# so the kill lands in the middle of group commits.
CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[3])
    from tests.journal.factories import make_auth, make_reversal
    from gateway.core.records import AuthState
    from gateway.journal import SqliteJournal

    async def main():
        journal = SqliteJournal(sys.argv[1], durability=sys.argv[2])
        await journal.start()
        for i in range(1, 201):
            journal.put(make_auth(i))
        for i in range(1, 51):
            journal.put(make_reversal(i))
        await journal.flush()
        print("durable", journal.committed_seq, flush=True)
        i = 1000
        while True:
            journal.put(make_auth(i))
            journal.put(make_auth(i % 200 + 1, AuthState.APPROVED))
            i += 1
            if i % 50 == 0:
                # A producer that leaves the writer thread room, as the event loop does.
                await asyncio.sleep(0.001)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("durability", ["process", "power"])
async def test_durable_records_survive_sigkill(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "journal.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), durability, str(REPO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.split() == ["durable", "250"], child.stderr.read() if child.stderr else ""
        # Let it commit writes made after the report, so the kill interrupts it mid-stream.
        assert await _committed_after_report(path), "the child stopped committing"
        assert child.poll() is None
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL

    journal = SqliteJournal(path)
    try:
        auths, reversals = await journal.load_open()
        ids = await journal.next_ids()
    finally:
        await journal.close()
    by_id = {a.txn_id: a for a in auths}
    assert set(range(1, 201)) <= set(by_id)  # the first 200 were reported durable
    assert all(by_id[i].state in (AuthState.IN_FLIGHT, AuthState.APPROVED) for i in range(1, 201))
    assert [r.reversal_id for r in reversals] == list(range(1, 51))
    assert all(r.state is ReversalState.OWED for r in reversals)
    assert ids.txn_id > 1011  # writes after the report went on until the kill

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


async def _committed_after_report(path: Path) -> bool:
    """Wait until the child has committed an id it put after reporting durability."""
    # Generous: under a loaded machine a "power" commit of a large batch takes seconds.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn = sqlite3.connect(path)
        try:
            highest = conn.execute("SELECT max(txn_id) FROM authorizations").fetchone()[0]
        finally:
            conn.close()
        if highest is not None and highest > 1010:
            return True
        await asyncio.sleep(0.005)
    return False
