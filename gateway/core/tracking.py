"""What the core tracks: requests on the wire, authorizations and their reversals.

Mutable working objects, one per request / authorization / reversal; ``record()`` takes the
immutable snapshot the journal stores. They hold no logic: GatewayCore decides.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from gateway.core.keys import DuplicateKey, FieldValues, RepeatKey
from gateway.core.records import (
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)
from gateway.wire.framing import Frame

IndexKey = tuple[str, str | None]  # (response MTI, DE 11 as the acquirer sees it)

# Shared and read-only: an empty mapping per closed authorization cost 64 bytes each, and the
# gateway remembers every request for the duplicate window.
NO_FIELDS: Mapping[str, str] = MappingProxyType({})


class EchoFields(Mapping[str, str]):
    """The echo fields a lingering request keeps (for the decline of a duplicate), as a tuple
    of values beside the dialect's shared tuple of names: ~200 bytes where a dict of a dozen
    fields takes ~460, for every request remembered during the duplicate window."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], source: Mapping[str, str]) -> None:
        self._names = names
        self._values = tuple(source.get(name) for name in names)

    def __getitem__(self, key: str) -> str:
        try:
            value = self._values[self._names.index(key)]
        except ValueError:
            value = None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        pairs = zip(self._names, self._values, strict=True)
        return (name for name, value in pairs if value is not None)

    def __len__(self) -> int:
        return sum(value is not None for value in self._values)

    def to_dict(self) -> dict[str, str]:
        pairs = zip(self._names, self._values, strict=True)
        return {name: value for name, value in pairs if value is not None}


class Phase(Enum):
    AWAITING = "awaiting"  # forwarded, no answer yet
    ANSWERED = "answered"  # the acquirer answered; lingering for duplicates
    TIMED_OUT = "timed_out"  # no answer in time, or the link broke; lingering
    ABANDONED = "abandoned"  # the terminal reversed it while it was in flight


@dataclass(slots=True, eq=False)
class Pending:
    """A request forwarded to the acquirer, from the forward until it is forgotten
    (``duplicate_window`` after its answer or timeout)."""

    mti: str
    fields: Mapping[str, str]  # the terminal's fields; only the echo fields once it is done
    conns: list[int]  # connections waiting for the answer (the first and its duplicates)
    link_id: int
    index_key: IndexKey
    match_values: FieldValues  # acquirer-side values of the dialect's match fields
    dup_key: DuplicateKey
    repeat_key: RepeatKey
    terminal_stan: str | None
    acquirer_stan: str | None  # DE 11 towards the acquirer (differs under STAN rewrite)
    owns_stan: bool  # the STAN allocator holds ``acquirer_stan`` for it
    restore: Mapping[str, str]  # what ForwardToTerminal replaces: the terminal's own STAN
    tpdu: bytes
    header: bytes
    auth: Authorization | None = None  # None: a pass-through request (not journaled)
    phase: Phase = Phase.AWAITING
    answer: Frame | None = None  # the acquirer's response, for duplicates
    forget_at: float = 0.0
    timer_seq: int = 0


@dataclass(slots=True, eq=False)
class Authorization:
    """A journaled (reversible) authorization; mirrors its AuthorizationRecord."""

    txn_id: int
    created_at: float
    updated_at: float
    state: AuthState
    mti: str
    terminal_id: str | None
    stan: str | None
    acquirer_stan: str | None
    rrn: str | None
    amount: str | None
    transmission_time: str | None  # DE 7, to find the original of a terminal's DE 90
    tpdu: bytes
    header: bytes
    reversal_fields: Mapping[str, str]
    response_code: str | None = None
    approval_code: str | None = None
    # DE 4 of an approval that names another amount than the request's (partial approval)
    approved_amount: str | None = None
    pending: Pending | None = None
    reversal: Reversal | None = None
    deliveries: dict[int, None] = field(default_factory=dict)  # refs not yet reported
    # The dialect's other identity fields (DE 42 for CUP: a terminal id is unique only within
    # its merchant), kept after reversal_fields is cleared, to tie a terminal's reversal.
    identity: tuple[str | None, ...] = ()
    closed_at: float | None = None
    timer_seq: int = 0

    def record(self, fields: Mapping[str, str] | None = None) -> AuthorizationRecord:
        """Its snapshot, journaling ``fields`` instead of ``reversal_fields`` when given."""
        # Positional: the hot path builds three of these per authorization (records.py order).
        return AuthorizationRecord(
            self.txn_id,
            self.created_at,
            self.updated_at,
            self.state,
            self.mti,
            self.terminal_id,
            self.stan,
            self.acquirer_stan,
            self.rrn,
            self.amount,
            self.response_code,
            self.approval_code,
            self.tpdu,
            self.header,
            self.reversal_fields if fields is None else fields,
        )

    @classmethod
    def from_record(cls, record: AuthorizationRecord) -> Authorization:
        return cls(
            txn_id=record.txn_id,
            created_at=record.created_at,
            updated_at=record.updated_at,
            state=record.state,
            mti=record.mti,
            terminal_id=record.terminal_id,
            stan=record.stan,
            acquirer_stan=record.acquirer_stan,
            rrn=record.rrn,
            amount=record.amount,
            transmission_time=record.reversal_fields.get("7"),
            tpdu=record.tpdu,
            header=record.header,
            reversal_fields=dict(record.reversal_fields),
            response_code=record.response_code,
            approval_code=record.approval_code,
        )


@dataclass(slots=True, eq=False)
class Waiter:
    """A terminal connection waiting for the answer to its own reversal (0400/0420)."""

    conn_id: int
    mti: str
    fields: Mapping[str, str]  # the response echo fields of its message
    tpdu: bytes
    header: bytes


# Unanswered attempts a reversal keeps count of: each lets one "25" pass as possibly its late
# answer (one more repeat). Without a cap, an hour of timeouts would cost as many repeats
# after the acquirer is back, and fail the reversal of an original it never saw.
UNANSWERED_KEPT = 2


@dataclass(slots=True, eq=False)
class Reversal:
    """One reversal of one authorization; mirrors its ReversalRecord. Owns its own timer."""

    reversal_id: int
    txn_id: int
    auth: Authorization | None  # None: its authorization was closed before a crash
    created_at: float
    updated_at: float
    state: ReversalState
    reason: ReversalReason
    mti: str  # base MTI: 0400 or 0420
    stan: str
    fields: Mapping[str, str]  # all data elements but DE 7
    tpdu: bytes
    header: bytes
    expires_at: float
    index_key: IndexKey
    match_values: FieldValues
    attempts: int = 0
    next_attempt_at: float | None = None
    last_response_code: str | None = None
    link_id: int | None = None
    sent_before: bool = False  # an attempt went out (attempts restart at 0 on requeue)
    last_chance: bool = False  # recovered past its expiry: one attempt before it fails
    # Answered "original not found" (25), not final yet: it keeps its STAN and stays matchable
    # for another attempt's answer, and while its original's answer may still come, its
    # fields (in memory), to be reopened if that answer is an approval.
    reopenable: bool = False
    # Attempts that went unanswered (timed out, their link broke, or the process restarted),
    # at most UNANSWERED_KEPT: a "25" may be the late answer of one of them while a later one
    # released the hold.
    unanswered: int = 0
    # A "25" came while this attempt was out and was taken as an older attempt's: it may have
    # been this one's, so this attempt's timeout does not count as unanswered.
    answer_may_have_come: bool = False
    waiters: dict[int, Waiter] = field(default_factory=dict)
    # The terminal whose own message is the attempt on the wire, and the replace that restores
    # its STAN: that terminal gets the acquirer's answer byte for byte.
    forwarded: tuple[int, Mapping[str, str]] | None = None
    timer_seq: int = 0

    def record(self) -> ReversalRecord:
        done = self.state in (ReversalState.ACKNOWLEDGED, ReversalState.CANCELLED)
        return ReversalRecord(
            self.reversal_id,
            self.txn_id,
            self.created_at,
            self.updated_at,
            self.state,
            self.reason,
            self.mti,
            self.stan,
            self.attempts,
            self.next_attempt_at,
            self.last_response_code,
            NO_FIELDS if done else self.fields,
            self.tpdu,
            self.header,
            self.expires_at,
        )

    @classmethod
    def from_record(
        cls,
        saved: ReversalRecord,
        *,
        auth: Authorization | None,
        fields: Mapping[str, str],
        expires_at: float,
        index_key: IndexKey,
        match_values: FieldValues,
    ) -> Reversal:
        """A journaled reversal read back; what it is matched by is the caller's to say."""
        return cls(
            reversal_id=saved.reversal_id,
            txn_id=saved.txn_id,
            auth=auth,
            created_at=saved.created_at,
            updated_at=saved.updated_at,
            state=saved.state,
            reason=saved.reason,
            mti=saved.mti,
            stan=saved.stan,
            fields=fields,
            tpdu=saved.tpdu,
            header=saved.header,
            expires_at=expires_at,
            index_key=index_key,
            match_values=match_values,
            attempts=saved.attempts,
            last_response_code=saved.last_response_code,
        )
