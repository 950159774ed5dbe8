"""The SQLite journal: one file in WAL mode, group commit once per batch of puts.

Where commits run depends on the durability setting:

- ``process`` (default): on the event loop itself, once per loop iteration that put something
  a send waits for (and at most ``commit_delay`` after a put nobody waits for). A commit in
  WAL mode with ``synchronous=NORMAL`` is a write to the OS page cache, tens of microseconds:
  cheaper than waking a thread and waking the loop back, and no thread competes with the loop
  for the GIL. The loop never waits on a lock: the connection has no busy timeout, and a
  commit that finds another writer (``saf retry``, pruning) is retried a moment later. WAL
  checkpoints run in a worker thread, not inside a commit on the loop.
- ``power``: ``synchronous=FULL`` fsyncs every commit (milliseconds), so commits run on one
  writer thread. ``put`` drops the row into the pending batch under a lock; the writer takes
  everything pending, upserts it in one transaction, commits, and reports the committed
  sequence number with ``call_soon_threadsafe``. While a commit runs, new puts pile up into
  the next batch, so the batch size follows the load without any timer.

Either way ``put`` never touches the database, a later snapshot of an id replaces an earlier
one still pending (a dict keyed by id), and sends wait for ``committed_seq``, never block.

Reads and operator writes (recovery, ``saf list``/``saf retry``, pruning) use a second
connection in a worker thread (``asyncio.to_thread``); several processes may open the same
file (the gateway and the CLI). Every write transaction is ``BEGIN IMMEDIATE`` so that lock
waits go through the busy timeout instead of failing.

Durability: WAL with ``synchronous=NORMAL`` survives a crash of the process (``process``);
``synchronous=FULL`` also survives a power loss (``power``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import structlog

from gateway.core.records import (
    OPEN_AUTH_STATES,
    OPEN_REVERSAL_STATES,
    AuthorizationRecord,
    ReversalRecord,
    ReversalState,
)
from gateway.journal.base import (
    DONE_AUTH_STATES,
    DONE_REVERSAL_STATES,
    DURABILITIES,
    CommitListener,
    CommitStats,
    Durability,
    ErrorListener,
    JournalClosedError,
    JournalSchemaError,
    JournalWriteError,
    NextIds,
    Record,
    StatsListener,
    check_no_sensitive_fields,
)
from gateway.journal.rows import (
    AUTH_COLUMNS,
    REVERSAL_COLUMNS,
    Row,
    auth_from_row,
    auth_row,
    reversal_from_row,
    reversal_row,
)

SCHEMA_VERSION = 2
# Version 1 -> 2: reversals.expires_at (an operator's retry renews a reversal's expiry, and a
# restart must not take it back). Older files are upgraded in place at start.
_MIGRATIONS = {1: ("ALTER TABLE reversals ADD COLUMN expires_at REAL",)}
# Authorizations by terminal and STAN, for ``find_authorizations`` (STAN rewrite only: a terminal's
# reversal of a sale the gateway no longer remembers). Kept only where asked for
# (``terminal_index``): with terminals by the thousand each insert lands on another page of it,
# 5-9 µs a transaction (bench/README.md).
_TERMINAL_INDEX = "authorizations_terminal"
_CREATE_TERMINAL_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {_TERMINAL_INDEX} ON authorizations (terminal_id, stan)"
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS authorizations (
        txn_id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        state TEXT NOT NULL,
        mti TEXT NOT NULL,
        terminal_id TEXT,
        stan TEXT,
        acquirer_stan TEXT,
        rrn TEXT,
        amount TEXT,
        response_code TEXT,
        approval_code TEXT,
        tpdu BLOB NOT NULL,
        header BLOB NOT NULL,
        reversal_fields TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS reversals (
        reversal_id INTEGER PRIMARY KEY,
        txn_id INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        mti TEXT NOT NULL,
        stan TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at REAL,
        last_response_code TEXT,
        fields TEXT NOT NULL,
        tpdu BLOB NOT NULL,
        header BLOB NOT NULL,
        expires_at REAL
    )""",
    # Operator retries waiting for the running gateway to pick them up (take_requeued).
    "CREATE TABLE IF NOT EXISTS requeued (reversal_id INTEGER PRIMARY KEY, requested_at REAL)",
    # Recovery reads open states; pruning reads completed states by age.
    "CREATE INDEX IF NOT EXISTS authorizations_state ON authorizations (state, updated_at)",
    "CREATE INDEX IF NOT EXISTS reversals_state ON reversals (state, updated_at)",
)

# Meta keys the journal keeps for itself; put_meta refuses them.
_SCHEMA_KEY = "schema_version"
_TXN_HIGH_KEY = "txn_id_high"  # highest txn_id ever stored (survives pruning)
_REVERSAL_HIGH_KEY = "reversal_id_high"
RESERVED_META_KEYS = frozenset({_SCHEMA_KEY, _TXN_HIGH_KEY, _REVERSAL_HIGH_KEY})


def _upsert(table: str, columns: tuple[str, ...], fixed: tuple[str, ...] = ()) -> str:
    """``fixed``: columns a record never changes once written; an update leaves them (and the
    indexes on them) alone."""
    key, rest = columns[0], columns[1:]
    updates = ", ".join(f"{c} = excluded.{c}" for c in rest if c not in fixed)
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


# An authorization's terminal and STAN are its terminal's request's, for good.
_UPSERT_AUTH = _upsert("authorizations", AUTH_COLUMNS, fixed=("created_at", "terminal_id", "stan"))
_UPSERT_REVERSAL = _upsert("reversals", REVERSAL_COLUMNS)
_UPSERT_META = (
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
    "excluded.value"
)
_SELECT_AUTH = f"SELECT {', '.join(AUTH_COLUMNS)} FROM authorizations"
_SELECT_REVERSAL = f"SELECT {', '.join(REVERSAL_COLUMNS)} FROM reversals"

log = structlog.get_logger("gateway.journal")

# A commit that fails is retried with growing pauses; at close, after this many tries in a
# row the writer gives up and close() raises.
_RETRY_PAUSES = (0.01, 0.05, 0.2, 1.0)
_TRIES_AT_CLOSE = 3
# Loop-side commits: after this many rows written, a worker thread checkpoints. A row upsert
# adds a few pages to the WAL (table leaf, index leaves), so this keeps the WAL near the size
# at which SQLite's own automatic checkpoint would run, inside a commit, on the loop.
_CHECKPOINT_ROWS = 500
# find_authorizations: a terminal that starts its STANs again every day has one sale per day on a
# STAN; more than this many within the retention period is not a terminal's own reuse.
_FOUND_LIMIT = 50
# Pruning deletes this many rows per transaction (~3 ms), then pauses longer than the loop's
# first commit retry (10 ms) so that the loop gets the journal in between.
_PRUNE_CHUNK = 1000
_PRUNE_PAUSE = 0.02
# After this long without a commit, a TRUNCATE checkpoint empties the WAL file: the page images
# it holds (PANs of settled reversals among them) do not outlive the traffic that wrote them.
_IDLE_TRUNCATE_SECONDS = 5.0

_T = TypeVar("_T")


def _marks(count: int) -> str:
    return ", ".join("?" for _ in range(count))


class SqliteJournal:
    """The default journal backend. See the module docstring for the threading model."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        busy_timeout: float = 5.0,
        commit_delay: float = 0.01,
        on_stats: StatsListener | None = None,
        on_error: ErrorListener | None = None,
        terminal_index: bool | None = None,
    ) -> None:
        """``terminal_index``: keep the index ``find_authorizations`` reads (True: create it at
        start, False: drop it, None: leave the file as it is, for the operator commands)."""
        if durability not in DURABILITIES:
            raise ValueError(f"journal durability must be 'process' or 'power', not {durability!r}")
        self.path = Path(path)
        self.durability: Durability = durability
        self.busy_timeout = busy_timeout
        self._terminal_index = terminal_index
        # Snapshots nobody waits for (an answer recorded, a delivery) may wait this long to
        # share a commit; request_commit() and flush() commit at once. Fewer commits per
        # transaction; after a crash such a snapshot can be this much older.
        self.commit_delay = commit_delay
        self._urgent = False
        self._writer_idle = False
        # Loop-side commits (durability "process"): the connection and the scheduled commit.
        self._on_loop = durability == "process"
        self._loop_conn: sqlite3.Connection | None = None
        self._commit_soon: asyncio.Handle | None = None  # this loop iteration (or a retry)
        self._commit_later: asyncio.TimerHandle | None = None  # commit_delay after a put
        self._loop_failures = 0
        self._rows_since_checkpoint = 0
        self._checkpointing = False
        self._checkpoints: set[asyncio.Task[None]] = set()
        self._idle_check: asyncio.TimerHandle | None = None
        self._commits_at_idle_check = 0
        self._records_at_truncate = 0
        self.on_stats = on_stats
        self.on_error = on_error

        # Shared with the writer thread, guarded by _lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._auths: dict[int, Row] = {}
        self._reversals: dict[int, Row] = {}
        self._meta: dict[str, str] = {}
        self._pending_puts = 0
        self._seq = 0
        self._closing = False

        # Event loop side only.
        self._state = "new"  # new -> running -> closing -> closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
        self._committed_seq = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._listeners: list[CommitListener] = []
        self._fatal: JournalWriteError | None = None

        # Metrics, read by the ops layer (updated on the event loop thread).
        self.last_stats: CommitStats | None = None
        self.commits = 0
        self.records_written = 0
        self.commit_errors = 0
        self.rejected = 0  # puts refused (sensitive fields)
        self.last_error: BaseException | None = None

        # The side connection for reads and operator writes, used from worker threads.
        self._side: sqlite3.Connection | None = None
        self._side_lock = threading.Lock()
        self._closing_event = threading.Event()  # long side work (pruning) stops early

    def __repr__(self) -> str:
        return (
            f"SqliteJournal({str(self.path)!r}, durability={self.durability!r}, "
            f"state={self._state!r}, seq={self._seq}, committed={self._committed_seq})"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._state != "new":
            raise JournalClosedError(f"journal {self.path} was already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._on_loop:
            self._loop_conn = await asyncio.to_thread(self._connect, loop_side=True)
            self._state = "running"
            self._arm_idle_check()
            return
        opened: asyncio.Future[None] = loop.create_future()
        self._writer_done = loop.create_future()
        self._thread = threading.Thread(
            target=self._writer_main, args=(opened,), name="journal-writer", daemon=True
        )
        self._thread.start()
        await opened
        self._state = "running"
        self._arm_idle_check()

    async def close(self) -> None:
        """Write everything pending, stop the writer, close both connections.

        Raises :class:`JournalWriteError` when the last batches could not be written.
        """
        if self._state in ("closing", "closed"):
            return
        started = self._state == "running"
        self._state = "closing"
        self._closing_event.set()
        if self._idle_check is not None:
            self._idle_check.cancel()
        try:
            if started and self._on_loop:
                await self._close_loop_side()
            elif started:
                with self._lock:
                    self._closing = True
                    self._wake.notify()
                assert self._writer_done is not None
                await self._writer_done
        finally:
            self._state = "closed"
            for task in list(self._checkpoints):  # none may open the side connection again
                with contextlib.suppress(Exception):
                    await task
            await asyncio.to_thread(self._close_side)
        if self._fatal is not None:
            raise self._fatal

    # -- the hot path ------------------------------------------------------------------------

    @property
    def committed_seq(self) -> int:
        return self._committed_seq

    @property
    def last_seq(self) -> int:
        return self._seq

    def put(self, record: Record) -> int:
        if self._state != "running":
            raise JournalClosedError(f"journal {self.path} is {self._state}: cannot put")
        try:
            check_no_sensitive_fields(record)
        except Exception:
            self.rejected += 1
            raise
        if isinstance(record, AuthorizationRecord):
            row = auth_row(record)
            with self._lock:
                self._auths[record.txn_id] = row
                return self._queued()
        row = reversal_row(record)
        with self._lock:
            self._reversals[record.reversal_id] = row
            return self._queued()

    def put_meta(self, key: str, value: str) -> int:
        if self._state != "running":
            raise JournalClosedError(f"journal {self.path} is {self._state}: cannot put")
        if key in RESERVED_META_KEYS:
            raise ValueError(f"meta key {key!r} belongs to the journal itself")
        with self._lock:
            self._meta[key] = str(value)
            return self._queued()

    def _queued(self) -> int:
        """Count a put and wake an idle writer (or plan a loop-side commit). Called with _lock
        held."""
        self._seq += 1
        self._pending_puts += 1
        if self._on_loop:
            if self._commit_soon is None and self._commit_later is None:
                self._schedule_commit(self.commit_delay)
        elif self._writer_idle:
            self._wake.notify()
        return self._seq

    def request_commit(self) -> None:
        """Something waits for what was put so far (a send held behind it): commit now."""
        if self._on_loop:
            if self._commit_soon is None and self._pending_puts and self._state != "closed":
                self._schedule_commit(0.0)
            return
        with self._lock:
            if not self._urgent:
                self._urgent = True
                self._wake.notify()

    def on_commit(self, listener: CommitListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    async def flush(self) -> None:
        target = self._seq
        if self._committed_seq >= target:
            return
        if self._fatal is not None:
            raise self._fatal
        if self._state not in ("running", "closing") or self._loop is None:
            raise JournalClosedError(f"journal {self.path} is {self._state}: cannot flush")
        waiter = self._loop.create_future()
        self._waiters.append((target, waiter))
        self.request_commit()
        await waiter

    # -- loop-side commits (durability "process") ---------------------------------------------

    def _schedule_commit(self, delay: float) -> None:
        assert self._loop is not None
        if delay <= 0:
            if self._commit_later is not None:
                self._commit_later.cancel()
                self._commit_later = None
            self._commit_soon = self._loop.call_soon(self._commit_on_loop)
        else:
            self._commit_later = self._loop.call_later(delay, self._commit_on_loop)

    def _commit_on_loop(self) -> None:
        self._commit_soon = None
        if self._commit_later is not None:
            self._commit_later.cancel()
            self._commit_later = None
        if self._state != "running" or not self._pending_puts:
            return
        assert self._loop_conn is not None
        with self._lock:
            auths, reversals, meta, puts, seq = self._take_batch()
        started = time.perf_counter()
        try:
            _write(self._loop_conn, auths, reversals, meta)
        except Exception as exc:
            # Locked by another writer (no busy timeout here), or a disk error: keep the
            # batch and try again; sends behind it keep waiting.
            self._put_back(auths, reversals, meta, puts)
            self._loop_failures += 1
            self._failed(exc)
            pause = _RETRY_PAUSES[min(self._loop_failures, len(_RETRY_PAUSES)) - 1]
            assert self._loop is not None
            self._commit_soon = self._loop.call_later(pause, self._commit_on_loop)
            return
        self._loop_failures = 0
        latency = time.perf_counter() - started
        records = len(auths) + len(reversals) + len(meta)
        self._committed(CommitStats(seq, records, puts, latency))
        self._rows_since_checkpoint += records
        if self._rows_since_checkpoint >= _CHECKPOINT_ROWS and not self._checkpointing:
            self._start_checkpoint()

    def _start_checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy the WAL back into the database file from a worker thread, so the WAL file
        stays small. PASSIVE never blocks the loop's commits; TRUNCATE (when the journal is
        idle) also empties the file."""
        assert self._loop is not None
        self._checkpointing = True
        self._rows_since_checkpoint = 0
        task = self._loop.create_task(self._checkpoint(mode))
        self._checkpoints.add(task)
        task.add_done_callback(self._checkpoints.discard)

    def _arm_idle_check(self) -> None:
        assert self._loop is not None
        self._idle_check = self._loop.call_later(_IDLE_TRUNCATE_SECONDS, self._check_idle)

    def _check_idle(self) -> None:
        if self._state != "running":
            return
        quiet = self.commits == self._commits_at_idle_check
        self._commits_at_idle_check = self.commits
        written = self.records_written != self._records_at_truncate
        if quiet and written and not self._checkpointing:
            self._records_at_truncate = self.records_written
            self._start_checkpoint("TRUNCATE")
        self._arm_idle_check()

    async def _checkpoint(self, mode: str = "PASSIVE") -> None:
        statement = f"PRAGMA wal_checkpoint({mode})"
        try:
            await self._side_call(lambda c: c.execute(statement).fetchall())
        except Exception as exc:  # the next one may succeed; the WAL only grows meanwhile
            # Not a commit error: nothing waits for a checkpoint.
            log.warning("journal_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._checkpointing = False

    async def _close_loop_side(self) -> None:
        """Write what is pending (from a worker thread, where waiting for a lock is fine),
        then close the loop-side connection."""
        for handle in (self._commit_soon, self._commit_later):
            if handle is not None:
                handle.cancel()
        self._commit_soon = self._commit_later = None
        for task in list(self._checkpoints):
            await task
        conn = self._loop_conn
        assert conn is not None
        try:
            await asyncio.to_thread(conn.execute, f"PRAGMA busy_timeout = {self._busy_ms}")
            failures = 0
            while self._pending_puts:
                with self._lock:
                    auths, reversals, meta, puts, seq = self._take_batch()
                started = time.perf_counter()
                try:
                    await asyncio.to_thread(_write, conn, auths, reversals, meta)
                except Exception as exc:
                    self._put_back(auths, reversals, meta, puts)
                    self._failed(exc)
                    failures += 1
                    if failures >= _TRIES_AT_CLOSE:
                        self._give_up(self._gave_up(failures, exc, self._pending_puts))
                        return
                    await asyncio.sleep(_RETRY_PAUSES[failures - 1])
                    continue
                latency = time.perf_counter() - started
                records = len(auths) + len(reversals) + len(meta)
                self._committed(CommitStats(seq, records, puts, latency))
        finally:
            self._loop_conn = None
            await asyncio.to_thread(conn.close)

    # -- the writer thread -------------------------------------------------------------------

    def _writer_main(self, opened: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._post(_settle, opened, None, exc)
            self._post(_settle, self._writer_done, None, None)
            return
        self._post(_settle, opened, None, None)
        try:
            self._write_batches(conn)
        finally:
            conn.close()
            self._post(_settle, self._writer_done, None, None)

    def _write_batches(self, conn: sqlite3.Connection) -> None:
        failures = 0
        while True:
            with self._wake:
                while not self._pending_puts and not self._closing:
                    self._writer_idle = True
                    self._wake.wait()
                self._writer_idle = False
                if not self._pending_puts:
                    return  # closing, and everything is written
                if self.commit_delay > 0 and not failures:
                    # Group commit: let more snapshots join until someone waits for them.
                    deadline = time.monotonic() + self.commit_delay
                    while not self._urgent and not self._closing:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wake.wait(remaining)
                self._urgent = False
                auths, reversals, meta, puts, seq = self._take_batch()
                closing = self._closing
            started = time.perf_counter()
            try:
                _write(conn, auths, reversals, meta)
            except Exception as exc:
                failures += 1
                self._put_back(auths, reversals, meta, puts)
                self._post(self._failed, exc)
                if closing and failures >= _TRIES_AT_CLOSE:
                    with self._lock:
                        unwritten = self._pending_puts
                    self._post(self._give_up, self._gave_up(failures, exc, unwritten))
                    return
                time.sleep(_RETRY_PAUSES[min(failures, len(_RETRY_PAUSES)) - 1])
                continue
            failures = 0
            latency = time.perf_counter() - started
            records = len(auths) + len(reversals) + len(meta)
            self._post(self._committed, CommitStats(seq, records, puts, latency))

    def _take_batch(
        self,
    ) -> tuple[dict[int, Row], dict[int, Row], dict[str, str], int, int]:
        """Everything pending, as one batch: rows, puts it covers, sequence it reaches.
        Called with _lock held."""
        batch = (self._auths, self._reversals, self._meta, self._pending_puts, self._seq)
        self._auths, self._reversals, self._meta = {}, {}, {}
        self._pending_puts = 0
        return batch

    def _put_back(
        self,
        auths: dict[int, Row],
        reversals: dict[int, Row],
        meta: dict[str, str],
        puts: int,
    ) -> None:
        """Return a batch that failed to the pending one; snapshots put since then win."""
        with self._lock:
            self._auths = auths | self._auths
            self._reversals = reversals | self._reversals
            self._meta = meta | self._meta
            self._pending_puts += puts

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the event loop (skipped once the loop is gone)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(callback, *args)

    # -- commit reports, on the event loop thread ----------------------------------------------

    def _committed(self, stats: CommitStats) -> None:
        self._committed_seq = stats.seq
        self.last_stats = stats
        self.commits += 1
        self.records_written += stats.records
        for listener in list(self._listeners):
            self._call(listener, stats.seq)
        while self._waiters and self._waiters[0][0] <= stats.seq:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self.on_stats is not None:
            self._call(self.on_stats, stats)

    def _failed(self, exc: BaseException) -> None:
        self.commit_errors += 1
        self.last_error = exc
        if self.on_error is not None:
            self._call(self.on_error, exc)

    def _gave_up(self, failures: int, exc: Exception, unwritten: int) -> JournalWriteError:
        """The error close() raises when the last batches cannot be written."""
        return JournalWriteError(
            f"journal {self.path}: gave up writing at close after {failures} failed commits "
            f"({type(exc).__name__}: {exc})",
            unwritten,
        )

    def _give_up(self, error: JournalWriteError) -> None:
        self._fatal = error
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _call(self, callback: Callable[[Any], None], arg: Any) -> None:
        """A failing listener must not stop the others or the flush waiters."""
        try:
            callback(arg)
        except Exception as exc:
            assert self._loop is not None
            self._loop.call_exception_handler(
                {"message": f"journal commit listener {callback!r} failed", "exception": exc}
            )

    # -- connections ---------------------------------------------------------------------------

    @property
    def _busy_ms(self) -> int:
        return int(self.busy_timeout * 1000)

    def _connect(self, *, loop_side: bool = False) -> sqlite3.Connection:
        """Open a connection. ``loop_side``: for commits on the event loop, which must never
        wait for a lock or run a checkpoint (see the module docstring)."""
        _create_private_file(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,  # opened in a worker thread: waiting is fine here
            isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
            check_same_thread=False,  # the side connection moves between worker threads
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalSchemaError(f"journal {self.path}: cannot use WAL mode ({mode})")
            synchronous = "FULL" if self.durability == "power" else "NORMAL"
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # Deleted and overwritten rows (PANs of settled reversals) are zeroed in the
            # database file. Older page images stay in the -wal file until its frames are
            # reused after a checkpoint, the journal is idle (_IDLE_TRUNCATE_SECONDS) or it
            # closes: docs/reversal.md, "The journal".
            conn.execute("PRAGMA secure_delete=ON")
            _ensure_schema(conn, self.path)
            if self._terminal_index is not None:  # once, by the first connection
                _keep_terminal_index(conn, self._terminal_index)
                self._terminal_index = None
            if loop_side:
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute("PRAGMA busy_timeout = 0")  # from now on used on the loop
        except BaseException:
            conn.close()
            raise
        return conn

    async def _side_call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.to_thread(self._with_side, work)

    def _with_side(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._side_lock:
            if self._side is None:
                self._side = self._connect()
            return work(self._side)

    def _close_side(self) -> None:
        with self._side_lock:
            if self._side is not None:
                self._side.close()
                self._side = None

    # -- reads and operator writes -----------------------------------------------------------

    async def load_open(self) -> tuple[list[AuthorizationRecord], list[ReversalRecord]]:
        def work(conn: sqlite3.Connection) -> tuple[list[Row], list[Row]]:
            auth_states = sorted(s.value for s in OPEN_AUTH_STATES)
            reversal_states = sorted(s.value for s in OPEN_REVERSAL_STATES)
            with _transaction(conn, "BEGIN"):  # one snapshot for both tables
                auths = conn.execute(
                    f"{_SELECT_AUTH} WHERE state IN ({_marks(len(auth_states))}) ORDER BY txn_id",
                    auth_states,
                ).fetchall()
                reversals = conn.execute(
                    f"{_SELECT_REVERSAL} WHERE state IN ({_marks(len(reversal_states))}) "
                    "ORDER BY reversal_id",
                    reversal_states,
                ).fetchall()
            return auths, reversals

        auths, reversals = await self._side_call(work)
        return [auth_from_row(r) for r in auths], [reversal_from_row(r) for r in reversals]

    async def load_reversed_since(
        self, since: float
    ) -> list[tuple[AuthorizationRecord, ReversalRecord]]:
        done = sorted(s.value for s in DONE_AUTH_STATES)
        still_open = sorted(s.value for s in OPEN_REVERSAL_STATES)
        which = f"(state = ? AND updated_at >= ?) OR state IN ({_marks(len(still_open))})"
        values = (ReversalState.ACKNOWLEDGED.value, since, *still_open)

        def work(conn: sqlite3.Connection) -> tuple[list[Row], list[Row]]:
            with _transaction(conn, "BEGIN"):  # one snapshot for both tables
                reversals = conn.execute(
                    f"{_SELECT_REVERSAL} WHERE {which} ORDER BY reversal_id", values
                ).fetchall()
                auths = conn.execute(
                    f"{_SELECT_AUTH} WHERE state IN ({_marks(len(done))}) AND txn_id IN "
                    f"(SELECT txn_id FROM reversals WHERE {which})",
                    (*done, *values),
                ).fetchall()
            return auths, reversals

        auth_rows, reversal_rows = await self._side_call(work)
        auths = {record.txn_id: record for record in map(auth_from_row, auth_rows)}
        return [
            (auths[reversal.txn_id], reversal)
            for reversal in map(reversal_from_row, reversal_rows)
            if reversal.txn_id in auths
        ]

    async def load_closed_since(self, since: float) -> list[AuthorizationRecord]:
        closed = sorted(s.value for s in DONE_AUTH_STATES)

        def work(conn: sqlite3.Connection) -> list[Row]:
            return conn.execute(
                f"{_SELECT_AUTH} WHERE state IN ({_marks(len(closed))}) AND updated_at >= ? "
                "ORDER BY txn_id",
                (*closed, since),
            ).fetchall()

        return [auth_from_row(row) for row in await self._side_call(work)]

    async def find_authorizations(self, terminal_id: str, stan: str) -> list[AuthorizationRecord]:
        def work(conn: sqlite3.Connection) -> list[Row]:
            return conn.execute(
                f"{_SELECT_AUTH} WHERE terminal_id = ? AND stan = ? "
                f"ORDER BY txn_id DESC LIMIT {_FOUND_LIMIT}",
                (terminal_id, stan),
            ).fetchall()

        return [auth_from_row(row) for row in await self._side_call(work)]

    async def next_ids(self) -> NextIds:
        def work(conn: sqlite3.Connection) -> NextIds:
            with _transaction(conn, "BEGIN"):
                txn = _highest(conn, "SELECT max(txn_id) FROM authorizations", _TXN_HIGH_KEY)
                rev = _highest(conn, "SELECT max(reversal_id) FROM reversals", _REVERSAL_HIGH_KEY)
            return NextIds(txn + 1, rev + 1)

        return await self._side_call(work)

    async def get_meta(self, key: str) -> str | None:
        def work(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._side_call(work)

    async def list_reversals(
        self, states: Iterable[ReversalState] | None = None
    ) -> list[ReversalRecord]:
        wanted = None if states is None else sorted({ReversalState(s).value for s in states})

        def work(conn: sqlite3.Connection) -> list[Row]:
            if wanted is None:
                return conn.execute(f"{_SELECT_REVERSAL} ORDER BY reversal_id").fetchall()
            if not wanted:
                return []
            return conn.execute(
                f"{_SELECT_REVERSAL} WHERE state IN ({_marks(len(wanted))}) ORDER BY reversal_id",
                wanted,
            ).fetchall()

        return [reversal_from_row(r) for r in await self._side_call(work)]

    async def requeue_failed(
        self, reversal_ids: Iterable[int] | None = None, *, now: float | None = None
    ) -> list[int]:
        when = time.time() if now is None else now
        wanted = None if reversal_ids is None else sorted({int(i) for i in reversal_ids})
        failed = ReversalState.FAILED.value

        def work(conn: sqlite3.Connection) -> list[int]:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                if wanted is None:
                    ids = [
                        r[0]
                        for r in conn.execute(
                            "SELECT reversal_id FROM reversals WHERE state = ? "
                            "ORDER BY reversal_id",
                            (failed,),
                        )
                    ]
                else:
                    ids = [
                        i
                        for i in wanted
                        if conn.execute(
                            "SELECT 1 FROM reversals WHERE reversal_id = ? AND state = ?",
                            (i, failed),
                        ).fetchone()
                    ]
                # Due at once, with a fresh attempt budget; the old response code stays as
                # history until the next attempt replaces it.
                # expires_at NULL: counted again from now by the gateway that takes it up
                # (take_requeued), or by the next start (see expiry in the core's restore).
                conn.executemany(
                    "UPDATE reversals SET state = ?, attempts = 0, next_attempt_at = ?, "
                    "updated_at = ?, expires_at = NULL WHERE reversal_id = ?",
                    [(ReversalState.OWED.value, when, when, i) for i in ids],
                )
                conn.executemany(
                    "INSERT INTO requeued (reversal_id, requested_at) VALUES (?, ?) "
                    "ON CONFLICT (reversal_id) DO NOTHING",
                    [(i, when) for i in ids],
                )
            return ids

        return await self._side_call(work)

    async def take_requeued(self) -> list[int]:
        def work(conn: sqlite3.Connection) -> list[int]:
            # Polled every second: look without the write lock first.
            if conn.execute("SELECT 1 FROM requeued LIMIT 1").fetchone() is None:
                return []
            with _transaction(conn, "BEGIN IMMEDIATE"):
                ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT reversal_id FROM requeued ORDER BY requested_at, reversal_id"
                    )
                ]
                conn.executemany("DELETE FROM requeued WHERE reversal_id = ?", [(i,) for i in ids])
            return ids

        return await self._side_call(work)

    async def prune(self, older_than: float) -> int:
        """Delete completed records older than ``older_than``, in small transactions: the
        loop's commits (which never wait for a lock) get the journal between two of them, so
        a prune of millions of rows never holds up a send for more than a few milliseconds.
        Stops early when the journal closes."""
        auth_states = sorted(s.value for s in DONE_AUTH_STATES)
        reversal_states = sorted(s.value for s in DONE_REVERSAL_STATES)
        deletes = [
            (
                f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE state IN "
                f"({_marks(len(states))}) AND updated_at < ? LIMIT {_PRUNE_CHUNK})",
                (*states, older_than),
            )
            for table, states in (("authorizations", auth_states), ("reversals", reversal_states))
        ]

        def work(conn: sqlite3.Connection) -> int:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                # Remember the highest ids first, so that pruning never makes ids reusable.
                for key, query in (
                    (_TXN_HIGH_KEY, "SELECT max(txn_id) FROM authorizations"),
                    (_REVERSAL_HIGH_KEY, "SELECT max(reversal_id) FROM reversals"),
                ):
                    conn.execute(_UPSERT_META, (key, str(_highest(conn, query, key))))
            deleted = 0
            for statement, parameters in deletes:
                while not self._closing_event.is_set():
                    with _transaction(conn, "BEGIN IMMEDIATE"):
                        chunk = conn.execute(statement, parameters).rowcount
                    deleted += chunk
                    if chunk < _PRUNE_CHUNK:
                        break
                    time.sleep(_PRUNE_PAUSE)  # the loop's commit retries meanwhile
            with _transaction(conn, "BEGIN IMMEDIATE"):
                conn.execute(
                    "DELETE FROM requeued WHERE reversal_id NOT IN (SELECT reversal_id FROM "
                    "reversals)"
                )
            return deleted

        return await self._side_call(work)


# -- helpers ------------------------------------------------------------------------------------


def _settle(future: asyncio.Future[Any] | None, result: Any, error: BaseException | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _write(
    conn: sqlite3.Connection,
    auths: dict[int, Row],
    reversals: dict[int, Row],
    meta: dict[str, str],
) -> None:
    """One batch, one transaction."""
    with _transaction(conn, "BEGIN IMMEDIATE"):
        if auths:
            conn.executemany(_UPSERT_AUTH, auths.values())
        if reversals:
            conn.executemany(_UPSERT_REVERSAL, reversals.values())
        if meta:
            conn.executemany(_UPSERT_META, meta.items())


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _highest(conn: sqlite3.Connection, query: str, meta_key: str) -> int:
    """The highest id in a table or remembered in meta from before a prune (0 when none)."""
    in_table = conn.execute(query).fetchone()[0] or 0
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (meta_key,)).fetchone()
    remembered = int(row[0]) if row is not None else 0
    return max(int(in_table), remembered)


def _keep_terminal_index(conn: sqlite3.Connection, keep: bool) -> None:
    """Create or drop the index by terminal and STAN. Creating it over a journal of many days
    reads the whole table once (at start, before the gateway listens)."""
    with _transaction(conn, "BEGIN IMMEDIATE"):
        conn.execute(_CREATE_TERMINAL_INDEX if keep else f"DROP INDEX IF EXISTS {_TERMINAL_INDEX}")


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables if missing; refuse a file written by another schema version."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
    except sqlite3.OperationalError:  # no meta table yet: a new journal
        row = None
    if row is None:
        with _transaction(conn, "BEGIN IMMEDIATE"):
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (_SCHEMA_KEY, str(SCHEMA_VERSION)),
            )
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
    if str(row[0]).isdigit() and int(row[0]) in _MIGRATIONS:
        _migrate(conn, int(row[0]))
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
    if str(row[0]) != str(SCHEMA_VERSION):
        raise JournalSchemaError(
            f"journal {path} has schema version {row[0]}; this gateway reads version "
            f"{SCHEMA_VERSION}"
        )


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Upgrade a journal written by an older gateway, one version at a time, each step in the
    same transaction as the version it records (a crash leaves the old or the new schema)."""
    with _transaction(conn, "BEGIN IMMEDIATE"):
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (_SCHEMA_KEY,)).fetchone()
        version = int(row[0])  # another process may have upgraded it meanwhile
        while version in _MIGRATIONS:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
        conn.execute(_UPSERT_META, (_SCHEMA_KEY, str(version)))


def _create_private_file(path: Path) -> None:
    """Create the journal (and its directory) readable by its owner only: it holds PANs.

    SQLite gives the -wal and -shm files the permissions of the database file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


if TYPE_CHECKING:
    from gateway.journal.base import Journal

    def _conforms(journal: SqliteJournal) -> Journal:
        return journal  # mypy checks that SqliteJournal implements the Journal protocol
