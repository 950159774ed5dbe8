"""The money invariant, checked end to end: what the host holds against what terminals were told.

After a run has settled (the gateway had time to reverse), these must hold:
- every hold still open on the acquirer's ledger belongs to an approval a terminal received
  (otherwise the cardholder's money is held for goods never handed over);
- no original was reversed twice;
- no approval a terminal received was released by a reversal (the merchant handed over the
  goods and the money went back: allowed only after a gateway crash, reported separately);
- no terminal was told "approved" for something the host does not hold.

Pure: reads the ledger's holds and the terminals' records, returns the violations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.sim.ledger import Hold, Ledger, OriginalKey
from gateway.sim.terminals import Outcome, TxnRecord

# Fields of the key a terminal and the host both know. With a gateway that rewrites DE 11
# towards the acquirer, match on ("mti", "terminal_id", "transmission_time", "amount", "rrn")
# instead (DE 37 passes through).
DEFAULT_MATCH_ON: tuple[str, ...] = ("mti", "terminal_id", "stan", "transmission_time", "amount")
_KEY_FIELDS = frozenset({*DEFAULT_MATCH_ON, "rrn"})

MatchKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Violations:
    unreported_holds: tuple[Hold, ...]  # open holds whose approval no terminal received
    reversed_twice: tuple[Hold, ...]  # originals with more than one distinct reversal
    released_approvals: tuple[tuple[TxnRecord, Hold], ...]  # told approved, then released
    approvals_without_hold: tuple[TxnRecord, ...]  # told approved, the host holds nothing

    @property
    def ok(self) -> bool:
        return not (
            self.unreported_holds
            or self.reversed_twice
            or self.released_approvals
            or self.approvals_without_hold
        )

    @property
    def ok_after_crash(self) -> bool:
        """After a gateway crash, in-doubt approvals may be reversed although delivered."""
        return not (self.unreported_holds or self.reversed_twice or self.approvals_without_hold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unreported_holds": [hold.to_dict() for hold in self.unreported_holds],
            "reversed_twice": [hold.to_dict() for hold in self.reversed_twice],
            "released_approvals": [record.to_dict() for record, _ in self.released_approvals],
            "approvals_without_hold": [record.to_dict() for record in self.approvals_without_hold],
        }

    def describe(self) -> str:
        """One line per violation, for an assertion message (no card data: keys only)."""
        lines = [
            f"held, never told approved: {_describe_key(h.key)}" for h in self.unreported_holds
        ]
        lines += [
            f"reversed twice: {_describe_key(h.key)} ({h.reversals} reversals)"
            for h in self.reversed_twice
        ]
        lines += [
            f"told approved, then released: {_describe_key(h.key)}"
            for _, h in self.released_approvals
        ]
        lines += [
            f"told approved, nothing held: {_describe_key(r.key)}"
            for r in self.approvals_without_hold
        ]
        return "\n".join(lines) or "no violations"


def check(
    ledger: Ledger | Iterable[Hold],
    told: Iterable[TxnRecord],
    match_on: Iterable[str] = DEFAULT_MATCH_ON,
) -> Violations:
    """Compare the host's holds with what terminals were told."""
    fields = tuple(match_on)
    unknown = set(fields) - _KEY_FIELDS
    if unknown:
        raise ValueError(f"cannot match on {sorted(unknown)}; choose from {sorted(_KEY_FIELDS)}")
    holds = ledger.holds if isinstance(ledger, Ledger) else list(ledger)
    approved: dict[MatchKey, TxnRecord] = {}
    for record in told:
        if record.outcome is Outcome.APPROVED:
            approved.setdefault(_record_key(record, fields), record)

    unreported: list[Hold] = []
    released: list[tuple[TxnRecord, Hold]] = []
    held_keys: set[MatchKey] = set()
    for hold in holds:
        key = _hold_key(hold, fields)
        held_keys.add(key)
        told_approved = approved.get(key)
        if told_approved is None:
            if not hold.released:
                unreported.append(hold)
        elif hold.released:
            released.append((told_approved, hold))
    return Violations(
        unreported_holds=tuple(unreported),
        reversed_twice=tuple(hold for hold in holds if hold.reversed_twice),
        released_approvals=tuple(released),
        approvals_without_hold=tuple(
            record for key, record in approved.items() if key not in held_keys
        ),
    )


def _hold_key(hold: Hold, fields: tuple[str, ...]) -> MatchKey:
    return tuple(hold.rrn if name == "rrn" else getattr(hold.key, name) for name in fields)


def _record_key(record: TxnRecord, fields: tuple[str, ...]) -> MatchKey:
    key = record.key
    rrn = record.response_rrn or record.rrn
    return tuple(rrn if name == "rrn" else getattr(key, name) for name in fields)


def _describe_key(key: OriginalKey) -> str:
    return (
        f"{key.mti} terminal {key.terminal_id} stan {key.stan} "
        f"DE7 {key.transmission_time or '-'} amount {key.amount}"
    )
