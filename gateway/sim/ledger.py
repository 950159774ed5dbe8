"""The acquirer simulator's ledger of held funds: what the host approved and what it released.

This is the ground truth the end-to-end tests judge the gateway by. Every approval of a
reversible request holds its amount, whether or not the response ever reached anybody (a
dropped or late approval still holds: that is the failure the gateway exists to repair). A
reversal that finds its original releases the hold once; any further reversal of the same
original releases nothing and is counted, so "reversed twice" is visible.

Finding the original of a reversal:
- with DE 90 (original MTI + STAN + DE 7): by DE 41 + original MTI + original STAN + DE 7;
- without DE 90 (CUP terminals reverse with the original's own STAN): by DE 41 + DE 11 + DE 4.

Pure: no clock reads (``now`` is passed in), no I/O. The full PAN is never stored, only masked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.core.mti import base_mti, is_repeat
from gateway.core.reversal import pan_from_track2
from gateway.wire.masking import mask_pan


def amount_of(fields: Mapping[str, str]) -> int | None:
    """DE 4 in minor units, or None when absent or not numeric."""
    value = fields.get("4")
    if value is None or not value.isdigit():
        return None
    return int(value)


def pan_of(fields: Mapping[str, str]) -> str | None:
    """DE 2, or the PAN part of track 2 (DE 35) for a track-only request."""
    pan = fields.get("2")
    if pan:
        return pan
    track2 = fields.get("35")
    return pan_from_track2(track2) if track2 else None


@dataclass(frozen=True, slots=True)
class OriginalKey:
    """What identifies an approved original for the end-to-end checks.

    A terminal that was told "approved" knows all of these for its own request, so the
    invariant checker can tie what terminals were told to what the host holds.
    """

    mti: str  # base MTI: 0100, 0200
    terminal_id: str | None  # DE 41
    stan: str | None  # DE 11 as the host saw it
    transmission_time: str | None  # DE 7 (absent in CUP terminal traffic)
    amount: int | None  # DE 4 in minor units


class ReversalOutcome(StrEnum):
    RELEASED = "released"  # the first reversal of a held original: the funds are released
    REPEAT = "repeat"  # a repeat (0401/0421, or the same reversal again) of the one that released
    DUPLICATE = "duplicate"  # a second, distinct reversal of an original already released
    UNKNOWN = "unknown"  # no approved original matches: never seen, or declined


@dataclass(slots=True)
class Hold:
    """Funds held for one approved original, and what reversals did to it."""

    key: OriginalKey
    approved_at: float
    approval_code: str
    rrn: str | None = None  # DE 37 as the host answered it
    currency: str | None = None
    processing_code: str | None = None
    pan_masked: str | None = None
    released: bool = False
    released_at: float | None = None
    reversals: int = 0  # every reversal message that found this original
    repeat_reversals: int = 0
    duplicate_reversals: int = 0
    duplicate_requests: int = 0  # the original itself arrived again (it was not held twice)
    reversal_ids: set[tuple[str, str | None, str | None]] = field(default_factory=set)

    @property
    def amount(self) -> int:
        return self.key.amount or 0

    @property
    def reversed_twice(self) -> bool:
        return self.duplicate_reversals > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mti": self.key.mti,
            "terminal_id": self.key.terminal_id,
            "stan": self.key.stan,
            "transmission_time": self.key.transmission_time,
            "amount": self.amount,
            "currency": self.currency,
            "processing_code": self.processing_code,
            "pan": self.pan_masked,
            "rrn": self.rrn,
            "approval_code": self.approval_code,
            "approved_at": self.approved_at,
            "released": self.released,
            "released_at": self.released_at,
            "reversals": self.reversals,
            "repeat_reversals": self.repeat_reversals,
            "duplicate_reversals": self.duplicate_reversals,
            "duplicate_requests": self.duplicate_requests,
        }


@dataclass(frozen=True, slots=True)
class UnknownReversal:
    """A reversal that found no approved original (kept for diagnosis; PAN masked)."""

    mti: str
    terminal_id: str | None
    stan: str | None
    amount: int | None
    original_data: str | None  # DE 90
    at: float


# Index keys: DE 90 lookups have no amount; same-STAN lookups have no MTI or DE 7.
_OriginalIndex = tuple[str, str | None, str | None, str | None]  # mti, DE 41, DE 11, DE 7
_StanAmountIndex = tuple[str | None, str | None, int | None]  # DE 41, DE 11, DE 4

UNKNOWN_REVERSALS_KEPT = 1000


class Ledger:
    """Holds per approved original, indexed for the two ways a reversal names its original."""

    def __init__(self) -> None:
        self._holds: list[Hold] = []
        self._by_original: dict[_OriginalIndex, Hold] = {}
        self._by_stan_amount: dict[_StanAmountIndex, list[Hold]] = {}
        self.unknown_reversals: list[UnknownReversal] = []
        self.counts: Counter[str] = Counter()
        # Called after every change (the simulator uses it to rewrite the ledger file).
        self.on_change: Callable[[], None] | None = None

    # Originals ---------------------------------------------------------------------------

    def approve(
        self,
        mti: str,
        fields: Mapping[str, str],
        approval_code: str,
        now: float,
        rrn: str | None = None,
    ) -> Hold:
        """Hold the amount of an approved reversible request; the same request again holds
        nothing more (a host recognises a duplicate) and returns the existing hold."""
        key = OriginalKey(
            mti=base_mti(mti),
            terminal_id=fields.get("41"),
            stan=fields.get("11"),
            transmission_time=fields.get("7"),
            amount=amount_of(fields),
        )
        index = (key.mti, key.terminal_id, key.stan, key.transmission_time)
        existing = self._by_original.get(index)
        if existing is not None and existing.key == key:
            existing.duplicate_requests += 1
            self.counts["duplicate_requests"] += 1
            self._changed()
            return existing
        pan = pan_of(fields)
        hold = Hold(
            key=key,
            approved_at=now,
            approval_code=approval_code,
            rrn=rrn or fields.get("37"),
            currency=fields.get("49"),
            processing_code=fields.get("3"),
            pan_masked=mask_pan(pan) if pan else None,
        )
        self._holds.append(hold)
        self._by_original[index] = hold
        self._by_stan_amount.setdefault((key.terminal_id, key.stan, key.amount), []).append(hold)
        self.counts["approved"] += 1
        self._changed()
        return hold

    def decline(self, mti: str, fields: Mapping[str, str]) -> None:
        """A declined request holds nothing; only counted (its reversal will be 'unknown')."""
        del mti, fields
        self.counts["declined"] += 1
        self._changed()

    def find_original(self, fields: Mapping[str, str]) -> Hold | None:
        """The hold a reversal with these fields refers to, or None."""
        terminal_id = fields.get("41")
        original_data = fields.get("90")
        if (
            original_data
            and len(original_data) >= 20
            and original_data[:4].isdigit()  # a made-up DE 90 is "unknown", not a crash
            and original_data[:4].strip("0")
        ):
            mti = base_mti(original_data[0:4])
            stan = original_data[4:10]
            transmission_time = original_data[10:20]
            hold = self._by_original.get((mti, terminal_id, stan, transmission_time))
            if hold is None and not transmission_time.strip("0"):
                # DE 90 zero-fills DE 7 when the original had none.
                hold = self._by_original.get((mti, terminal_id, stan, None))
            return hold
        candidates = self._by_stan_amount.get((terminal_id, fields.get("11"), amount_of(fields)))
        if not candidates:
            return None
        # A STAN can come round again on one terminal: prefer the newest hold still open.
        for hold in reversed(candidates):
            if not hold.released:
                return hold
        return candidates[-1]

    # Reversals ---------------------------------------------------------------------------

    def reverse(
        self, mti: str, fields: Mapping[str, str], now: float
    ) -> tuple[ReversalOutcome, Hold | None]:
        """Apply a reversal (0400/0401/0420/0421): release once, count everything after."""
        self.counts["reversals"] += 1
        hold = self.find_original(fields)
        if hold is None:
            self.counts["reversals_unknown"] += 1
            if len(self.unknown_reversals) < UNKNOWN_REVERSALS_KEPT:
                self.unknown_reversals.append(
                    UnknownReversal(
                        mti=mti,
                        terminal_id=fields.get("41"),
                        stan=fields.get("11"),
                        amount=amount_of(fields),
                        original_data=fields.get("90"),
                        at=now,
                    )
                )
            self._changed()
            return ReversalOutcome.UNKNOWN, None

        hold.reversals += 1
        # The identity of the reversal message itself: a repeat carries the same STAN and DE 7.
        transmission_time = fields.get("7")
        reversal_id = (base_mti(mti), fields.get("11"), transmission_time)
        if not hold.released:
            hold.released = True
            hold.released_at = now
            hold.reversal_ids.add(reversal_id)
            outcome = ReversalOutcome.RELEASED
        elif is_repeat(mti) or (transmission_time is not None and reversal_id in hold.reversal_ids):
            hold.repeat_reversals += 1
            outcome = ReversalOutcome.REPEAT
        else:
            hold.duplicate_reversals += 1
            hold.reversal_ids.add(reversal_id)
            outcome = ReversalOutcome.DUPLICATE
        self.counts[f"reversals_{outcome.value}"] += 1
        self._changed()
        return outcome, hold

    # Reading -----------------------------------------------------------------------------

    @property
    def holds(self) -> list[Hold]:
        """Every approved original, in approval order (a copy of the list, live holds)."""
        return list(self._holds)

    def open_holds(self) -> list[Hold]:
        return [hold for hold in self._holds if not hold.released]

    def summary(self) -> dict[str, int]:
        open_holds = self.open_holds()
        released = [hold for hold in self._holds if hold.released]
        return {
            "approved": self.counts["approved"],
            "declined": self.counts["declined"],
            "duplicate_requests": self.counts["duplicate_requests"],
            "holds_open": len(open_holds),
            "held_amount": sum(hold.amount for hold in open_holds),
            "released": len(released),
            "released_amount": sum(hold.amount for hold in released),
            "reversals": self.counts["reversals"],
            "reversals_released": self.counts["reversals_released"],
            "reversals_repeat": self.counts["reversals_repeat"],
            "reversals_duplicate": self.counts["reversals_duplicate"],
            "reversals_unknown": self.counts["reversals_unknown"],
            "reversed_twice": sum(1 for hold in self._holds if hold.reversed_twice),
        }

    def to_dict(self, entries: bool = True) -> dict[str, Any]:
        """JSON-ready view (PAN masked). ``entries=False`` gives the summary alone."""
        data: dict[str, Any] = {"summary": self.summary()}
        if entries:
            data["entries"] = [hold.to_dict() for hold in self._holds]
            data["unknown_reversals"] = [
                {
                    "mti": item.mti,
                    "terminal_id": item.terminal_id,
                    "stan": item.stan,
                    "amount": item.amount,
                    "original_data": item.original_data,
                    "at": item.at,
                }
                for item in self.unknown_reversals
            ]
        return data

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
