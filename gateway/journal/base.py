"""The journal's contract, shared by every backend (SQLite now, PostgreSQL later).

The journal stores the latest snapshot per authorization (``txn_id``) and per reversal
(``reversal_id``). The shell calls :meth:`Journal.put` on the event loop's hot path for every
``Persist`` the core emits; that only appends to the pending batch and returns a sequence
number. A background writer commits batches (group commit) and reports the highest sequence
number that is durable. The shell queues each acquirer send behind the sequence number of the
last ``Persist`` before it and releases it from the commit callback ("journal before you
send"): durability costs one commit per batch, never one await per message.

Reads (recovery at start, the operator CLI) and operator writes (``saf retry``, pruning) are
coroutines: a backend runs them off the event loop (SQLite: a worker thread with its own
connection; PostgreSQL: asyncpg). Nothing here is specific to one database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from gateway.core.records import (
    OPEN_AUTH_STATES,
    OPEN_REVERSAL_STATES,
    AuthorizationRecord,
    AuthState,
    ReversalRecord,
    ReversalState,
)
from gateway.wire.masking import DEFAULT_SENSITIVE_FIELDS

Record = AuthorizationRecord | ReversalRecord

Durability = Literal["process", "power"]
"""What a commit survives. ``process``: a crash of the gateway process (the default; the OS
still holds the data). ``power``: also a power loss or kernel crash (an fsync per commit)."""

DURABILITIES: tuple[Durability, ...] = ("process", "power")

# Completed records: nothing is owed any more, so they are pruned after the retention period
# and never keep card data on disk.
DONE_AUTH_STATES = frozenset(AuthState) - OPEN_AUTH_STATES
DONE_REVERSAL_STATES = frozenset(ReversalState) - OPEN_REVERSAL_STATES

# Track data (35, 36, 45), PIN block (52) and ICC data (55) never reach the disk. The core
# never puts them in a record; the journal checks again so that a core bug cannot write them.
SENSITIVE_FIELDS = DEFAULT_SENSITIVE_FIELDS

CommitListener = Callable[[int], None]
"""Called on the event loop thread with the highest durable sequence number, in order."""


class JournalError(Exception):
    """Base of every error the journal raises."""


class JournalClosedError(JournalError):
    """``put`` (or ``flush``) on a journal that is not started or already closed."""


class SensitiveFieldError(JournalError):
    """A record carries a field that must never be stored. Names the field, never its value."""

    def __init__(self, record: Record, mapping: str, field_numbers: Iterable[str]) -> None:
        self.kind, self.record_id = record_key(record)
        self.field_numbers = tuple(sorted(field_numbers, key=_field_order))
        self.mapping = mapping
        numbers = ", ".join(f"DE {n}" for n in self.field_numbers)
        super().__init__(
            f"refusing to journal {self.kind} {self.record_id}: {mapping} holds {numbers} "
            "(track data, PIN block and ICC data are never stored)"
        )


class JournalWriteError(JournalError):
    """A commit failed. While running the writer retries; at close it gives up with this."""

    def __init__(self, message: str, pending: int) -> None:
        super().__init__(f"{message} ({pending} snapshot(s) not written)")
        self.pending = pending


class JournalSchemaError(JournalError):
    """The journal file was written by a newer (or unknown) version of the gateway."""


class NextIds(NamedTuple):
    """First ids free for a new authorization and a new reversal (ids are never reused)."""

    txn_id: int
    reversal_id: int


@dataclass(frozen=True, slots=True)
class CommitStats:
    """One group commit, for metrics: the ops layer turns these into histograms."""

    seq: int  # every put up to this sequence number is durable
    records: int  # rows written (after coalescing)
    puts: int  # puts this commit covers (records + coalesced snapshots + meta writes)
    latency: float  # seconds from taking the batch to the commit returning


StatsListener = Callable[[CommitStats], None]
ErrorListener = Callable[[BaseException], None]


def record_key(record: Record) -> tuple[str, int]:
    """("authorization", txn_id) or ("reversal", reversal_id): what a snapshot supersedes."""
    if isinstance(record, AuthorizationRecord):
        return ("authorization", record.txn_id)
    return ("reversal", record.reversal_id)


def check_no_sensitive_fields(record: Record) -> None:
    """Raise :class:`SensitiveFieldError` when a record's field mapping holds DE 35/36/45/52/55."""
    if isinstance(record, AuthorizationRecord):
        mapping: Mapping[str, str] = record.reversal_fields
        name = "reversal_fields"
    else:
        mapping = record.fields
        name = "fields"
    if mapping and not SENSITIVE_FIELDS.isdisjoint(mapping):
        raise SensitiveFieldError(record, name, SENSITIVE_FIELDS.intersection(mapping))


def _field_order(number: str) -> tuple[int, str]:
    return (int(number), number) if number.isdigit() else (10_000, number)


@runtime_checkable
class Journal(Protocol):
    """What the service needs from a journal backend.

    Lifecycle: ``await start()``, then ``put``/``put_meta`` from the event loop, ``await
    close()`` at shutdown (it writes everything pending). Reads work without ``start`` (the
    CLI uses them on a journal another process is writing).
    """

    @property
    def committed_seq(self) -> int:
        """Every put with a sequence number up to this one is durable."""
        ...

    @property
    def last_seq(self) -> int:
        """The sequence number of the latest put (0 before the first)."""
        ...

    async def start(self) -> None:
        """Open the store (creating it and its schema if missing) and start the writer."""
        ...

    async def close(self) -> None:
        """Write everything pending, stop the writer and release the store."""
        ...

    def put(self, record: Record) -> int:
        """Queue this snapshot for the next commit; return its sequence number. Never blocks.

        Raises :class:`SensitiveFieldError` for a record holding DE 35/36/45/52/55 and
        :class:`JournalClosedError` when the journal is not running.
        """
        ...

    def put_meta(self, key: str, value: str) -> int:
        """Queue a small key-value setting (such as the last STAN used) like a snapshot."""
        ...

    def request_commit(self) -> None:
        """Commit what was put so far without waiting for more to join the batch (a send is
        held behind it). Never blocks."""
        ...

    def on_commit(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(seq)`` on the event loop after each commit; returns an unsubscribe."""
        ...

    async def flush(self) -> None:
        """Wait until everything put so far is durable."""
        ...

    async def load_open(self) -> tuple[list[AuthorizationRecord], list[ReversalRecord]]:
        """The open authorizations and reversals (``OPEN_*`` states), oldest id first."""
        ...

    async def load_reversed_since(
        self, since: float
    ) -> list[tuple[AuthorizationRecord, ReversalRecord]]:
        """Closed authorizations with a reversal ACKNOWLEDGED at or after ``since`` (unix
        seconds) or still open (``OPEN_REVERSAL_STATES``), each with that reversal, oldest
        reversal id first."""
        ...

    async def load_closed_since(self, since: float) -> list[AuthorizationRecord]:
        """Authorizations closed (DELIVERED, DECLINED, REVERSED) at or after ``since`` (unix
        seconds), oldest txn id first: a restarted gateway still recognises a resend of one
        for the rest of its duplicate window."""
        ...

    async def find_authorizations(self, terminal_id: str, stan: str) -> list[AuthorizationRecord]:
        """The authorizations of one terminal with this (terminal) STAN, in every state, newest
        first, as long as the journal keeps them (``retention_days``), at most a few dozen:
        under STAN rewrite a terminal's reversal of a sale the gateway no longer remembers is
        tied to it by these (and not to an older one when the newest is not delivered). A
        backend may need an index for it; the gateway asks for one only under STAN rewrite."""
        ...

    async def next_ids(self) -> NextIds:
        """The first ids never used by a stored (or pruned) record."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """A committed key-value setting, or None."""
        ...

    async def list_reversals(
        self, states: Iterable[ReversalState] | None = None
    ) -> list[ReversalRecord]:
        """Reversals in the given states (all when None), oldest id first."""
        ...

    async def requeue_failed(
        self, reversal_ids: Iterable[int] | None = None, *, now: float | None = None
    ) -> list[int]:
        """Operator retry: FAILED reversals (these ids, or all when None) back to OWED.

        Attempts restart at 0 and the reversal is due at once. Returns the ids that were
        FAILED and are now OWED; the running gateway learns them from :meth:`take_requeued`.
        """
        ...

    async def take_requeued(self) -> list[int]:
        """Ids requeued since the last call (by any process), each returned once."""
        ...

    async def prune(self, older_than: float) -> int:
        """Delete completed records last updated before ``older_than`` (unix seconds).

        Completed: authorizations DELIVERED, DECLINED, REVERSED; reversals ACKNOWLEDGED,
        CANCELLED. Returns how many rows were deleted.
        """
        ...
