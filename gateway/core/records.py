"""What the journal keeps: one record per authorization and one per reversal.

Records are immutable snapshots. The core emits a new snapshot on every state change and the
journal stores the latest one per id (later snapshots of the same id supersede earlier ones, so
a batch may coalesce them). After a restart the core is rebuilt from the open records alone.

Card data: ``reversal_fields`` holds what is needed to build a reversal (the PAN among it, never
track data, PIN block, CVV or DE 55). It is cleared as soon as no reversal can be owed any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from enum import StrEnum

from gateway.wire.snapshot import snapshot


class AuthState(StrEnum):
    """Where an authorization (0100/0200) stands."""

    IN_FLIGHT = "in_flight"  # journaled; its bytes may have reached the acquirer
    APPROVED = "approved"  # approval received, delivery to the terminal pending
    DELIVERED = "delivered"  # approval written to the terminal: nothing owed
    DECLINED = "declined"  # a decline came back: nothing held, nothing owed
    REVERSING = "reversing"  # a reversal is owed for it: see its ReversalRecord
    REVERSED = "reversed"  # its reversal was acknowledged


OPEN_AUTH_STATES = frozenset({AuthState.IN_FLIGHT, AuthState.APPROVED, AuthState.REVERSING})

# Card data, never kept once nothing can be owed: PAN, expiry date, track 1/2/3 data, PIN
# block, chip data (whatever else a dialect marks sensitive is never kept at all).
CARD_DATA_FIELDS = frozenset({"2", "14", "34", "35", "36", "45", "52", "55"})


class ReversalReason(StrEnum):
    TIMEOUT = "timeout"  # no response within the acquirer timeout
    LINK_LOST = "link_lost"  # acquirer connection broke after the request was written
    UNDELIVERABLE = "undeliverable"  # approval could not be written to the terminal
    IN_DOUBT = "in_doubt"  # found open in the journal after a restart
    TERMINAL = "terminal"  # the terminal sent its own reversal


class ReversalState(StrEnum):
    OWED = "owed"  # durable, not yet sent (or waiting for its next attempt)
    SENT = "sent"  # an attempt is on the wire, waiting for 0410/0430
    ACKNOWLEDGED = "acknowledged"  # a resolving response code came back
    FAILED = "failed"  # gave up after max attempts or expiry; an operator may retry
    CANCELLED = "cancelled"  # a late decline showed nothing was held, before it was sent


OPEN_REVERSAL_STATES = frozenset({ReversalState.OWED, ReversalState.SENT, ReversalState.FAILED})


@snapshot
class AuthorizationRecord:
    txn_id: int
    created_at: float  # unix seconds
    updated_at: float
    state: AuthState
    mti: str  # as the terminal sent it (0100, 0200)
    terminal_id: str | None  # DE 41
    stan: str | None  # DE 11 as the terminal sent it
    acquirer_stan: str | None  # DE 11 towards the acquirer (differs under STAN rewrite)
    rrn: str | None = None  # DE 37
    amount: str | None = None  # DE 4
    response_code: str | None = None  # DE 39 of the acquirer's answer
    approval_code: str | None = None  # DE 38 of the acquirer's answer
    tpdu: bytes = b""  # frame envelope of the original, reused for its reversal
    header: bytes = b""
    # repr=False: a record's repr must never print the PAN it carries.
    reversal_fields: Mapping[str, str] = field(default_factory=dict, repr=False)


@snapshot
class ReversalRecord:
    reversal_id: int
    txn_id: int  # the authorization it reverses
    created_at: float
    updated_at: float
    state: ReversalState
    reason: ReversalReason
    mti: str  # 0400 or 0420; each repeat goes out as mti + 1
    stan: str  # DE 11 of the reversal (new, or the original's)
    attempts: int = 0
    next_attempt_at: float | None = None
    last_response_code: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)  # the reversal's DEs
    tpdu: bytes = b""
    header: bytes = b""
    # When it gives up (fails) if still unacknowledged; renewed by an operator's retry. None:
    # not known (retried by `saf retry` while no gateway ran, or journaled by an older
    # version): the core counts reversal_expiry from updated_at.
    expires_at: float | None = None
