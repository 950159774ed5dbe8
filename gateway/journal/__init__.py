"""The journal: the durable source of truth for authorizations and owed reversals.

``Journal`` (in :mod:`gateway.journal.base`) is the contract; :class:`SqliteJournal` is the
default backend.
"""

from gateway.journal.base import (
    DONE_AUTH_STATES,
    DONE_REVERSAL_STATES,
    SENSITIVE_FIELDS,
    CommitStats,
    Durability,
    Journal,
    JournalClosedError,
    JournalError,
    JournalSchemaError,
    JournalWriteError,
    NextIds,
    Record,
    SensitiveFieldError,
)
from gateway.journal.sqlite import SqliteJournal

__all__ = [
    "DONE_AUTH_STATES",
    "DONE_REVERSAL_STATES",
    "SENSITIVE_FIELDS",
    "CommitStats",
    "Durability",
    "Journal",
    "JournalClosedError",
    "JournalError",
    "JournalSchemaError",
    "JournalWriteError",
    "NextIds",
    "Record",
    "SensitiveFieldError",
    "SqliteJournal",
]
