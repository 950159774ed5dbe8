"""Dialects: what one acquirer's ISO 8583 looks like, loaded from data files in specs/.

TO BE IMPLEMENTED (contract):

    def load_dialect(path: Path) -> Dialect        # raises DialectError naming file/field/problem
    def find_dialects(extra_dirs: Sequence[Path] = ()) -> dict[str, Path]
    def get_dialect(name: str, extra_dirs: Sequence[Path] = ()) -> Dialect   # cached per name+dirs
    BUILTIN_SPECS: Path                            # the project's specs/ directory
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.wire.framing import Framing

REVERSAL_REASONS = ("timeout", "link_lost", "undeliverable", "in_doubt", "terminal", "other")


class DialectError(ValueError):
    """A dialect file that cannot be used. Names the file, the field (or key) and the problem."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ReversalRules:
    """How this acquirer wants a reversal built (reversal-rules.md, 'Building the reversal')."""

    mti: str = "0400"  # "0400" or "0420"; each repeat goes out as mti + 1
    copy_fields: tuple[str, ...] = (
        "2", "3", "4", "12", "13", "14", "18", "22", "25", "32", "33", "37", "41", "42", "49",
    )  # fmt: skip
    stan: Literal["new", "original"] = "new"
    original_data: Literal["de90", "none"] = "de90"
    include_approval_code: bool = True  # DE 38 when the original was approved
    # reason -> DE 39 of the reversal; keys are REVERSAL_REASONS
    reason_codes: Mapping[str, str] = field(
        default_factory=lambda: {
            "timeout": "68",
            "link_lost": "68",
            "undeliverable": "22",
            "in_doubt": "68",
            "terminal": "17",
            "other": "06",
        }
    )
    # DE 39 values of a 0410/0430 that end the reversal: done, original not found, already done
    resolved_codes: frozenset[str] = frozenset({"00", "25", "94"})


@dataclass(frozen=True)
class Dialect:
    name: str
    description: str
    source: str  # the file it was loaded from
    spec: Mapping[str, Mapping[str, Any]]  # pyiso8583 field spec: "h", "t", "p", "1".."128"
    framing: Framing = field(default_factory=Framing)
    # Response matching: request MTI + 10 and these fields equal (where both carry them).
    match_fields: tuple[str, ...] = ("41", "11")
    # Two requests with these fields equal (where present) are the same request sent twice.
    duplicate_fields: tuple[str, ...] = ("41", "11", "4", "7", "12", "13")
    reversible_mtis: frozenset[str] = frozenset({"0100", "0200"})
    # DE 3 first two digits that hold funds; None means every code not listed as non-reversible.
    reversible_processing_codes: frozenset[str] | None = None
    non_reversible_processing_codes: frozenset[str] = frozenset({"31"})
    decline_code: str = "91"  # DE 39 of the decline the gateway itself sends a terminal
    # Fields copied from the request into a response the gateway makes itself.
    response_echo_fields: tuple[str, ...] = (
        "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49",
    )  # fmt: skip
    # Never logged, published or journaled: track data, PIN block, CVV-bearing fields, ICC data.
    sensitive_fields: frozenset[str] = frozenset({"35", "36", "45", "52", "55"})
    reversal: ReversalRules = field(default_factory=ReversalRules)

    def is_reversible(self, mti: str, processing_code: str | None) -> bool:
        """Does a request of this MTI and DE 3 hold funds, so that it may need a reversal?"""
        base = mti[:3] + "0"
        if base not in self.reversible_mtis:
            return False
        prefix = (processing_code or "")[:2]
        if prefix in self.non_reversible_processing_codes:
            return False
        if self.reversible_processing_codes is None:
            return True
        return prefix in self.reversible_processing_codes
