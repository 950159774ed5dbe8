"""Records for the journal tests: every field set, so a round trip checks them all."""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway.core.records import (
    AuthorizationRecord,
    AuthState,
    ReversalReason,
    ReversalRecord,
    ReversalState,
)

PAN = "4761739001010119"
T0 = 1_750_000_000.0


def make_auth(
    txn_id: int, state: AuthState = AuthState.IN_FLIGHT, **changes: Any
) -> AuthorizationRecord:
    record = AuthorizationRecord(
        txn_id=txn_id,
        created_at=T0 + txn_id,
        updated_at=T0 + txn_id,
        state=state,
        mti="0200",
        terminal_id="TERM0001",
        stan=f"{txn_id % 1_000_000:06d}",
        acquirer_stan=f"{(txn_id + 500) % 1_000_000:06d}",
        rrn="123456789012",
        amount="000000001500",
        tpdu=b"\x60\x00\x01\x00\x00",
        header=b"\x60\x31\x00\x31\x10\x03",
        reversal_fields={"2": PAN, "3": "000000", "4": "000000001500", "41": "TERM0001"},
    )
    return dataclasses.replace(record, **changes)


def make_reversal(
    reversal_id: int, state: ReversalState = ReversalState.OWED, **changes: Any
) -> ReversalRecord:
    record = ReversalRecord(
        reversal_id=reversal_id,
        txn_id=reversal_id + 1000,
        created_at=T0 + reversal_id,
        updated_at=T0 + reversal_id,
        state=state,
        reason=ReversalReason.TIMEOUT,
        mti="0400",
        stan=f"{reversal_id % 1_000_000:06d}",
        attempts=2,
        next_attempt_at=T0 + 60.5,
        last_response_code="91",
        fields={"2": PAN, "3": "000000", "4": "000000001500", "39": "98", "90": "0" * 42},
        tpdu=b"\x60\x00\x01\x00\x00",
        header=b"",
    )
    return dataclasses.replace(record, **changes)
