"""The SQLite journal: round trips, group commit, recovery reads, operator commands."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.records import (
    OPEN_AUTH_STATES,
    OPEN_REVERSAL_STATES,
    AuthState,
    ReversalState,
)
from gateway.journal import (
    CommitStats,
    Journal,
    JournalClosedError,
    JournalSchemaError,
    JournalWriteError,
    NextIds,
    SensitiveFieldError,
    SqliteJournal,
)
from gateway.journal import sqlite as sqlite_module

from .factories import PAN, T0, make_auth, make_reversal


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the database's write lock from another connection (as a busy CLI would)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def raw_rows(path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def reopen(path: Path) -> SqliteJournal:
    """A second journal on the same file, as the CLI or a restarted gateway opens it."""
    return SqliteJournal(path)


# -- round trips -------------------------------------------------------------------------------


async def test_round_trip_keeps_every_field(journal: SqliteJournal, journal_path: Path) -> None:
    auth = make_auth(7, AuthState.APPROVED, response_code="00", approval_code="A1B2C3")
    reversal = make_reversal(3, ReversalState.SENT, next_attempt_at=None, header=b"\x00\xff")
    bare = make_auth(8, terminal_id=None, stan=None, acquirer_stan=None, rrn=None, tpdu=b"")
    journal.put(auth)
    journal.put(reversal)
    journal.put(bare)
    await journal.flush()

    other = reopen(journal_path)
    try:
        auths, reversals = await other.load_open()
    finally:
        await other.close()
    assert auths == [auth, bare]
    assert reversals == [reversal]
    assert auths[0].reversal_fields["2"] == PAN  # an open record keeps what a reversal needs
    assert isinstance(auths[0].tpdu, bytes)


async def test_satisfies_the_journal_protocol(journal: SqliteJournal) -> None:
    assert isinstance(journal, Journal)


async def test_parent_directory_is_created_and_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "gateway" / "journal.db"
    async with SqliteJournal(path) as journal:
        journal.put(make_auth(1))
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- group commit ------------------------------------------------------------------------------


async def test_later_snapshots_supersede_and_coalesce(journal_path: Path) -> None:
    journal = SqliteJournal(journal_path)
    await journal.start()
    commits: list[CommitStats] = []
    journal.on_stats = commits.append
    try:
        # While another connection holds the write lock nothing can commit, so the writer holds
        # at most its first (already taken) batch and every later put lands in the next one.
        with write_lock(journal_path):
            for attempts in range(100):
                journal.put(make_reversal(1, attempts=attempts))
            journal.put(make_reversal(1, ReversalState.SENT, attempts=100))
            assert journal.committed_seq == 0
        await journal.flush()
    finally:
        await journal.close()

    assert sum(c.puts for c in commits) == 101
    assert sum(c.records for c in commits) <= 2  # 101 snapshots of one id: one row per batch
    rows = raw_rows(journal_path, "SELECT state, attempts FROM reversals")
    assert rows == [("sent", 100)]


async def test_commit_callback_reports_durable_sequences_in_order(
    journal: SqliteJournal, journal_path: Path
) -> None:
    put_seq: dict[int, int] = {}  # txn_id -> sequence number of its put
    reported: list[int] = []
    not_durable: list[int] = []

    def on_commit(seq: int) -> None:
        # "Journal before you send": at this moment every put up to seq is readable by
        # another connection, as it would be after a crash.
        reported.append(seq)
        stored = {r[0] for r in raw_rows(journal_path, "SELECT txn_id FROM authorizations")}
        not_durable.extend(t for t, s in put_seq.items() if s <= seq and t not in stored)

    unsubscribe = journal.on_commit(on_commit)
    for txn_id in range(1, 301):
        put_seq[txn_id] = journal.put(make_auth(txn_id))
        if txn_id % 25 == 0:
            await asyncio.sleep(0)  # let commit reports in between, as a busy loop would
    await journal.flush()

    assert list(put_seq.values()) == list(range(1, 301))
    assert reported == sorted(set(reported))
    assert reported[-1] == journal.last_seq == journal.committed_seq == 300
    assert not_durable == []

    unsubscribe()
    journal.put(make_auth(301))
    await journal.flush()
    assert reported[-1] == 300


async def test_failing_listener_does_not_stop_flush(journal: SqliteJournal) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    seen: list[int] = []

    def broken(seq: int) -> None:
        raise RuntimeError("listener bug")

    journal.on_commit(broken)
    journal.on_commit(seen.append)
    journal.put(make_auth(1))
    await journal.flush()
    assert seen[-1] == 1
    assert reported
    assert isinstance(reported[0]["exception"], RuntimeError)


async def test_close_writes_everything_pending(journal_path: Path) -> None:
    journal = SqliteJournal(journal_path)
    await journal.start()
    for txn_id in range(1, 501):
        journal.put(make_auth(txn_id))
    journal.put_meta("last_stan", "000500")
    await journal.close()  # no flush before it
    assert journal.committed_seq == 501

    with pytest.raises(JournalClosedError):
        journal.put(make_auth(501))
    other = reopen(journal_path)
    try:
        auths, _ = await other.load_open()
        assert [a.txn_id for a in auths] == list(range(1, 501))
        assert await other.get_meta("last_stan") == "000500"
    finally:
        await other.close()


async def test_put_before_start_is_refused(journal_path: Path) -> None:
    journal = SqliteJournal(journal_path)
    with pytest.raises(JournalClosedError, match="new"):
        journal.put(make_auth(1))
    await journal.close()


async def test_failed_commits_are_retried_never_dropped(journal_path: Path) -> None:
    errors: list[BaseException] = []
    failed = asyncio.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    journal = SqliteJournal(journal_path, busy_timeout=0.01, on_error=on_error)
    await journal.start()
    try:
        with write_lock(journal_path):
            journal.put(make_auth(1))
            await asyncio.wait_for(failed.wait(), timeout=30)
            journal.put(make_auth(2))
            assert journal.committed_seq == 0
        await journal.flush()
    finally:
        await journal.close()
    assert journal.commit_errors >= 1
    assert isinstance(errors[0], sqlite3.OperationalError)
    assert raw_rows(journal_path, "SELECT txn_id FROM authorizations ORDER BY 1") == [(1,), (2,)]


async def test_close_gives_up_when_the_store_stays_locked(journal_path: Path) -> None:
    journal = SqliteJournal(journal_path, busy_timeout=0.01)
    await journal.start()
    with write_lock(journal_path):
        journal.put(make_auth(1, reversal_fields={"2": PAN}))
        with pytest.raises(JournalWriteError) as raised:
            await journal.close()
    assert raised.value.pending == 1
    assert PAN not in str(raised.value)


# -- durability settings -----------------------------------------------------------------------


@pytest.mark.parametrize(("durability", "synchronous"), [("process", 1), ("power", 2)])
async def test_durability_sets_the_sync_level(
    journal_path: Path, durability: str, synchronous: int
) -> None:
    async with SqliteJournal(journal_path, durability=durability) as journal:  # type: ignore[arg-type]
        level = await journal._side_call(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        mode = await journal._side_call(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        journal.put(make_auth(1))
    assert (level, mode) == (synchronous, "wal")  # 1 = NORMAL, 2 = FULL


def test_unknown_durability_is_refused(journal_path: Path) -> None:
    with pytest.raises(ValueError, match="'process' or 'power'"):
        SqliteJournal(journal_path, durability="fsync")  # type: ignore[arg-type]


# -- recovery reads ----------------------------------------------------------------------------


async def test_load_open_returns_exactly_the_open_records(
    journal: SqliteJournal, journal_path: Path
) -> None:
    for txn_id, state in enumerate(AuthState, start=1):
        journal.put(make_auth(txn_id, state))
    for reversal_id, state in enumerate(ReversalState, start=1):
        journal.put(make_reversal(reversal_id, state))
    await journal.flush()

    auths, reversals = await journal.load_open()
    assert {a.state for a in auths} == set(OPEN_AUTH_STATES)
    assert len(auths) == len(OPEN_AUTH_STATES)
    assert {r.state for r in reversals} == set(OPEN_REVERSAL_STATES)
    assert len(reversals) == len(OPEN_REVERSAL_STATES)


async def test_completed_records_never_keep_card_data(
    journal: SqliteJournal, journal_path: Path
) -> None:
    # Even if the core forgot to clear the mapping of a settled record, the PAN is not stored.
    journal.put(make_auth(1, AuthState.DELIVERED))
    journal.put(make_auth(2, AuthState.REVERSING))
    journal.put(make_reversal(1, ReversalState.ACKNOWLEDGED))
    journal.put(make_reversal(2, ReversalState.FAILED))
    await journal.flush()
    auths = raw_rows(journal_path, "SELECT txn_id, reversal_fields FROM authorizations")
    assert {t: PAN in str(f) for t, f in auths} == {1: False, 2: True}
    reversals = raw_rows(journal_path, "SELECT reversal_id, fields FROM reversals")
    assert {r: PAN in str(f) for r, f in reversals} == {1: False, 2: True}


async def test_next_ids_start_at_one_and_follow_the_highest(journal: SqliteJournal) -> None:
    assert await journal.next_ids() == NextIds(1, 1)
    journal.put(make_auth(41))
    journal.put(make_auth(9))
    journal.put(make_reversal(5))
    await journal.flush()
    assert await journal.next_ids() == NextIds(42, 6)


async def test_meta_survives_a_reopen(journal: SqliteJournal, journal_path: Path) -> None:
    journal.put_meta("last_stan", "000041")
    journal.put_meta("last_stan", "000042")  # coalesced like snapshots
    await journal.flush()
    other = reopen(journal_path)
    try:
        assert await other.get_meta("last_stan") == "000042"
        assert await other.get_meta("missing") is None
    finally:
        await other.close()
    with pytest.raises(ValueError, match="schema_version"):
        journal.put_meta("schema_version", "9")


async def test_list_reversals_filters_by_state(journal: SqliteJournal) -> None:
    for reversal_id, state in enumerate(ReversalState, start=1):
        journal.put(make_reversal(reversal_id, state))
    await journal.flush()
    everything = await journal.list_reversals()
    assert [r.reversal_id for r in everything] == list(range(1, len(ReversalState) + 1))
    failed = await journal.list_reversals(states=[ReversalState.FAILED, ReversalState.OWED])
    assert {r.state for r in failed} == {ReversalState.FAILED, ReversalState.OWED}
    assert await journal.list_reversals(states=[]) == []


async def test_newer_schema_version_is_refused(journal_path: Path) -> None:
    async with SqliteJournal(journal_path):
        pass
    conn = sqlite3.connect(journal_path)
    with conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    journal = SqliteJournal(journal_path)
    with pytest.raises(JournalSchemaError, match="schema version 99"):
        await journal.start()
    await journal.close()


async def test_a_version_1_journal_is_upgraded_in_place(journal_path: Path) -> None:
    # What a gateway before reversal expiries were journaled left behind: no expires_at.
    async with SqliteJournal(journal_path) as journal:
        journal.put(make_reversal(1, ReversalState.OWED, attempts=2))
    conn = sqlite3.connect(journal_path, isolation_level=None)
    conn.execute("ALTER TABLE reversals DROP COLUMN expires_at")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()

    async with SqliteJournal(journal_path) as journal:
        _, [before] = await journal.load_open()
        assert (before.attempts, before.expires_at) == (2, None)  # the core counts it
        journal.put(make_reversal(2, expires_at=T0 + 50))
    assert raw_rows(journal_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    other = reopen(journal_path)
    try:
        _, revs = await other.load_open()
        assert [(r.reversal_id, r.expires_at) for r in revs] == [(1, None), (2, T0 + 50)]
    finally:
        await other.close()


# -- operator commands -------------------------------------------------------------------------


async def test_requeue_from_another_process_reaches_the_gateway(
    journal: SqliteJournal, journal_path: Path
) -> None:
    journal.put(make_reversal(1, ReversalState.FAILED, attempts=10))
    journal.put(make_reversal(2, ReversalState.FAILED, attempts=10, expires_at=T0 + 9))
    journal.put(make_reversal(3, ReversalState.OWED))
    await journal.flush()
    assert await journal.take_requeued() == []

    cli = reopen(journal_path)  # never started: the CLI only reads and requeues
    try:
        assert await cli.requeue_failed([2, 3, 99], now=T0 + 500) == [2]  # only FAILED ones
        listed = {r.reversal_id: r for r in await cli.list_reversals()}
    finally:
        await cli.close()
    assert listed[2].state is ReversalState.OWED
    assert (listed[2].attempts, listed[2].next_attempt_at) == (0, T0 + 500)
    assert listed[2].expires_at is None  # expired: counted again from the retry (the core)
    assert listed[1].state is ReversalState.FAILED

    assert await journal.take_requeued() == [2]
    assert await journal.take_requeued() == []  # each id once

    cli = reopen(journal_path)
    try:
        assert await cli.requeue_failed() == [1]  # all that are FAILED
    finally:
        await cli.close()
    assert await journal.take_requeued() == [1]


async def test_prune_deletes_old_completed_records_only(
    journal: SqliteJournal, journal_path: Path
) -> None:
    old, new = T0 - 100, T0 + 100
    for txn_id, state in enumerate(AuthState, start=1):
        journal.put(make_auth(txn_id, state, updated_at=old))
        journal.put(make_auth(txn_id + 100, state, updated_at=new))
    for reversal_id, state in enumerate(ReversalState, start=1):
        journal.put(make_reversal(reversal_id, state, updated_at=old))
        journal.put(make_reversal(reversal_id + 100, state, updated_at=new))
    await journal.flush()
    before = await journal.next_ids()

    deleted = await journal.prune(older_than=T0)

    done_auths = len(AuthState) - len(OPEN_AUTH_STATES)
    done_reversals = len(ReversalState) - len(OPEN_REVERSAL_STATES)
    assert deleted == done_auths + done_reversals
    auth_rows = raw_rows(journal_path, "SELECT state, updated_at FROM authorizations")
    assert len(auth_rows) == 2 * len(AuthState) - done_auths
    assert all(s in OPEN_AUTH_STATES or t == new for s, t in auth_rows)
    reversal_rows = raw_rows(journal_path, "SELECT state, updated_at FROM reversals")
    assert len(reversal_rows) == 2 * len(ReversalState) - done_reversals
    assert all(s in OPEN_REVERSAL_STATES or t == new for s, t in reversal_rows)
    assert await journal.prune(older_than=T0) == 0

    # Pruning the newest completed records too must not make their ids reusable.
    await journal.prune(older_than=new + 1)
    assert await journal.next_ids() == before


async def test_a_long_prune_lets_commits_through_and_stops_at_close(
    journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_PRUNE_CHUNK", 10)
    monkeypatch.setattr(sqlite_module, "_PRUNE_PAUSE", 0.05)  # 100 rows: about half a second
    for txn_id in range(1, 101):
        journal.put(make_auth(txn_id, AuthState.DELIVERED, updated_at=T0 - 100))
    await journal.flush()
    pruning = asyncio.create_task(journal.prune(older_than=T0))
    await asyncio.sleep(0.08)  # inside the prune
    journal.put(make_auth(500, AuthState.IN_FLIGHT))
    await asyncio.wait_for(journal.flush(), 0.3)  # between two chunks, not after them all
    assert not pruning.done()
    await journal.close()  # stops the prune early and writes what is pending
    assert 10 <= await pruning < 100


# -- card data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["35", "36", "45", "52", "55"])
async def test_sensitive_fields_are_refused(journal: SqliteJournal, field: str) -> None:
    secret = f"{PAN}=2512101123400001"
    auth = make_auth(1, reversal_fields={"2": PAN, field: secret})
    reversal = make_reversal(1, fields={field: secret})
    for record in (auth, reversal):
        with pytest.raises(SensitiveFieldError, match=f"DE {field}") as raised:
            journal.put(record)
        assert secret not in str(raised.value)
        assert PAN not in str(raised.value)
    assert journal.rejected == 2
    assert journal.last_seq == 0

    journal.put(make_auth(2))  # the journal keeps working
    await journal.flush()
    auths, reversals = await journal.load_open()
    assert [a.txn_id for a in auths] == [2]
    assert reversals == []


async def test_repr_shows_no_card_data(journal: SqliteJournal) -> None:
    journal.put(make_auth(1))
    assert PAN not in repr(journal)


async def test_commits_on_the_loop_are_checkpointed_off_it(
    journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loop-side commits never checkpoint inside a commit; a worker thread copies the WAL into
    # the database file every so many rows. Until then the file keeps only the schema.
    monkeypatch.setattr("gateway.journal.sqlite._CHECKPOINT_ROWS", 50)
    journal = SqliteJournal(journal_path)  # durability "process": commits on the loop
    await journal.start()
    try:
        size_at_start = journal_path.stat().st_size
        for txn_id in range(1, 41):
            journal.put(make_auth(txn_id))
            await journal.flush()
        assert journal_path.stat().st_size == size_at_start  # 40 rows: all still in the WAL
        for txn_id in range(41, 121):
            journal.put(make_auth(txn_id))
            await journal.flush()
        for task in list(journal._checkpoints):
            await task
        assert journal_path.stat().st_size > size_at_start
    finally:
        await journal.close()
    assert len(raw_rows(journal_path, "SELECT txn_id FROM authorizations")) == 120


async def test_an_idle_journal_empties_its_wal(
    journal: SqliteJournal, journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settled PANs are zeroed in the database file; the WAL's old page images go once the
    journal has been idle a moment (a TRUNCATE checkpoint)."""
    monkeypatch.setattr(sqlite_module, "_IDLE_TRUNCATE_SECONDS", 0.1)
    journal._idle_check.cancel()  # type: ignore[union-attr]
    journal._arm_idle_check()  # at the patched interval
    journal.put(make_auth(1, AuthState.IN_FLIGHT, reversal_fields={"2": PAN}))
    await journal.flush()
    journal.put(make_auth(1, AuthState.DELIVERED))
    await journal.flush()
    wal = Path(f"{journal_path}-wal")
    assert PAN.encode() in wal.read_bytes()
    deadline = asyncio.get_running_loop().time() + 5
    while wal.stat().st_size and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert wal.stat().st_size == 0
    assert PAN.encode() not in journal_path.read_bytes()  # secure_delete: zeroed there too


async def test_load_closed_since_returns_recently_closed_authorizations_without_card_data(
    journal: SqliteJournal, journal_path: Path
) -> None:
    """A restarted gateway recognises the resend of a request closed within the duplicate
    window: closed records keep the fields that find it, never the PAN or expiry date."""
    fields = {"2": PAN, "14": "2512", "7": "0908064519", "11": "000501", "12": "064519"}
    journal.put(make_auth(1, AuthState.DELIVERED, updated_at=T0 + 100, reversal_fields=fields))
    journal.put(make_auth(2, AuthState.DECLINED, updated_at=T0 + 100, reversal_fields=fields))
    journal.put(make_auth(3, AuthState.REVERSED, updated_at=T0 + 100, reversal_fields=fields))
    journal.put(make_auth(4, AuthState.DELIVERED, updated_at=T0 + 10, reversal_fields=fields))
    journal.put(make_auth(5, AuthState.APPROVED, updated_at=T0 + 100))  # open: load_open's
    await journal.flush()
    found = await journal.load_closed_since(T0 + 50)
    assert [(a.txn_id, a.state) for a in found] == [
        (1, AuthState.DELIVERED),
        (2, AuthState.DECLINED),
        (3, AuthState.REVERSED),
    ]
    assert all(
        dict(a.reversal_fields) == {"7": "0908064519", "11": "000501", "12": "064519"}
        for a in found
    )
    rows = raw_rows(journal_path, "SELECT txn_id, reversal_fields FROM authorizations")
    assert [txn_id for txn_id, text in rows if PAN in text or "2512" in text] == [5]


async def test_the_index_by_terminal_is_kept_only_where_asked_for(journal_path: Path) -> None:
    """Under STAN rewrite the gateway finds a terminal's sales by terminal and STAN; without it
    the index would only cost each insert a page write. The operator commands leave it."""

    def indexes() -> list[tuple[object, ...]]:
        return raw_rows(journal_path, "SELECT name FROM sqlite_master WHERE type = 'index'")

    query = "SELECT * FROM authorizations WHERE terminal_id = 'T' AND stan = 'S'"
    async with SqliteJournal(journal_path, terminal_index=True) as journal:
        journal.put(make_auth(7, AuthState.DELIVERED, reversal_fields={"7": "0908064519"}))
    assert ("authorizations_terminal",) in indexes()
    assert "authorizations_terminal" in str(raw_rows(journal_path, f"EXPLAIN QUERY PLAN {query}"))
    async with SqliteJournal(journal_path) as journal:  # saf list, saf retry, status
        [found] = await journal.find_authorizations("TERM0001", "000007")
        assert (found.txn_id, found.acquirer_stan) == (7, "000507")
    assert ("authorizations_terminal",) in indexes()
    async with SqliteJournal(journal_path, terminal_index=False) as journal:
        [found] = await journal.find_authorizations("TERM0001", "000007")  # a scan, still right
        assert found.txn_id == 7
    assert ("authorizations_terminal",) not in indexes()


async def test_find_authorizations_gives_a_terminals_authorizations_on_a_stan_newest_first(
    journal: SqliteJournal,
) -> None:
    """Under STAN rewrite a terminal's reversal of a sale the gateway no longer remembers is
    tied to it by what the journal kept: its acquirer STAN among it, never card data. Every
    state: a newer sale on the STAN that was declined must keep an older one from being
    taken for it."""
    kept = {"7": "0908064519", "11": "000900", "41": "TERM0001"}
    journal.put(make_auth(1, AuthState.DELIVERED, stan="000042", reversal_fields=kept))
    journal.put(make_auth(2, AuthState.DELIVERED, stan="000042", reversal_fields=kept))
    journal.put(make_auth(3, AuthState.DECLINED, stan="000042", reversal_fields=kept))
    journal.put(make_auth(4, AuthState.APPROVED, stan="000042"))
    journal.put(make_auth(6, AuthState.DELIVERED, stan="000042", terminal_id="TERM0002"))
    journal.put(make_auth(7, AuthState.DELIVERED, stan="000043", reversal_fields=kept))
    await journal.flush()
    found = await journal.find_authorizations("TERM0001", "000042")
    assert [(a.txn_id, a.state, a.acquirer_stan) for a in found] == [
        (4, AuthState.APPROVED, "000504"),
        (3, AuthState.DECLINED, "000503"),
        (2, AuthState.DELIVERED, "000502"),
        (1, AuthState.DELIVERED, "000501"),
    ]
    assert dict(found[2].reversal_fields) == kept
    assert await journal.find_authorizations("TERM0009", "000042") == []


async def test_an_update_keeps_an_authorizations_terminal_and_stan(
    journal: SqliteJournal,
) -> None:
    """They are the terminal's request's for good: an update leaves them (and their index)."""
    journal.put(make_auth(1, AuthState.IN_FLIGHT, stan="000042"))
    await journal.flush()
    journal.put(make_auth(1, AuthState.DELIVERED, stan="000042", reversal_fields={}))
    await journal.flush()
    [found] = await journal.find_authorizations("TERM0001", "000042")
    assert (found.created_at, found.state) == (T0 + 1, AuthState.DELIVERED)


async def test_load_reversed_since_returns_reversed_originals_without_card_data(
    journal: SqliteJournal, journal_path: Path
) -> None:
    """A terminal's reversal after a restart must still find the original the gateway
    reversed: the REVERSED record keeps DE 7 and its identity fields, never the PAN."""
    kept = {"2": PAN, "7": "0908064519", "14": "2512", "42": "MERCHANT0000001"}
    journal.put(make_auth(1001, AuthState.REVERSED, updated_at=T0 + 100, reversal_fields=kept))
    journal.put(make_reversal(1, ReversalState.ACKNOWLEDGED, updated_at=T0 + 100, fields={}))
    journal.put(make_auth(1002, AuthState.REVERSED, updated_at=T0 + 10, reversal_fields=kept))
    journal.put(make_reversal(2, ReversalState.ACKNOWLEDGED, updated_at=T0 + 10, fields={}))
    journal.put(make_auth(1003, AuthState.REVERSING))  # still owed: load_open's
    journal.put(make_reversal(3, ReversalState.SENT, updated_at=T0 + 100))
    journal.put(make_auth(1004, AuthState.DECLINED, updated_at=T0 + 100, reversal_fields=kept))
    journal.put(make_reversal(4, ReversalState.CANCELLED, updated_at=T0 + 100, fields={}))
    # a crash kept the original's closing record, not its reversal's: any age
    journal.put(make_auth(1005, AuthState.REVERSED, updated_at=T0 + 1, reversal_fields=kept))
    journal.put(make_reversal(5, ReversalState.SENT, updated_at=T0 + 1))
    await journal.flush()

    found = await journal.load_reversed_since(T0 + 50)
    assert [(a.txn_id, r.reversal_id, r.state) for a, r in found] == [
        (1001, 1, ReversalState.ACKNOWLEDGED),
        (1005, 5, ReversalState.SENT),
    ]
    assert dict(found[0][0].reversal_fields) == {"7": "0908064519", "42": "MERCHANT0000001"}
    assert len(await journal.load_reversed_since(T0)) == 3
    rows = raw_rows(journal_path, "SELECT txn_id, reversal_fields FROM authorizations")
    assert not [txn_id for txn_id, fields in rows if PAN in fields and txn_id != 1003]
    # a declined one keeps what finds its resend after a restart, never card data (DE 2, 14)
    assert [fields for txn_id, fields in rows if txn_id == 1004] == [
        '{"7":"0908064519","42":"MERCHANT0000001"}'
    ]
