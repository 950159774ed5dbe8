"""What the shell tells the core. Every event is handled with the current (wall-clock) time.

``fields`` carry only the data elements the core needs, already extracted by the shell with
the codec's fast scanner (see ``CORE_FIELDS``); the message itself travels as the opaque
``frame`` so it can be forwarded byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.records import AuthorizationRecord
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame
from gateway.wire.masking import DEFAULT_SENSITIVE_FIELDS
from gateway.wire.snapshot import snapshot

# Data elements the shell extracts for the core: MTI-independent keys, what a reversal copies,
# DE 35 only to derive the PAN of a track-only original (never stored), DE 38/39 of responses,
# DE 90 of terminal reversals. The dialect's match/duplicate/copy fields are added to these.
CORE_FIELDS: tuple[str, ...] = (
    "2", "3", "4", "7", "11", "12", "13", "14", "18", "22", "25", "32", "33",
    "35", "37", "38", "39", "41", "42", "49", "90",
)  # fmt: skip


# What a terminal's reversal carries beyond a request's fields, which the gateway's repeats of
# it must carry too: DE 56 (original data, ISO 8583:1993), DE 90 (original data, 1987), DE 95
# (replacement amounts: a partial reversal). Not every field it carries: private fields (DE 48,
# DE 60-63) may hold a CVC 2, and one the codec cannot read would lose the whole reversal.
REVERSAL_DATA = ("56", "90", "95")

# What the core reads of every acquirer response, besides the dialect's match fields: DE 11,
# DE 38 (the approval code, for the reversal), DE 39 and DE 41.
RESPONSE_FIELDS = ("11", "38", "39", "41")
# ... and on rarer paths: DE 7/12/13/37 as echoed (they tell apart two requests with one key: a
# STAN reused while the first one's answer was late), DE 37 in the notice of a late or
# unmatched answer, DE 3 (an unmatched approval of a balance inquiry holds nothing), DE 4 of an
# approval other than "00" (a partial approval, "10", approves the amount it names). The shell
# may decode these when they are read; one it cannot decode it hands the core as UNREADABLE.
# The shell must hand all of them: a field missing here silently turns a check off.
RESPONSE_FIELDS_LATER = ("3", "4", "7", "12", "13", "37")
# What the shell hands for one of those it cannot decode: present, equal to no value a field
# can carry (a NUL first), so that it never agrees with anything.
UNREADABLE = "\x00unreadable"


@dataclass(frozen=True, slots=True)
class FieldsRead:
    """Which data elements the shell hands the core, per dialect (the one place that says
    it: the service and the seeded simulation both extract by it)."""

    request: tuple[str, ...]  # of a terminal's request (not a reversal)
    terminal_reversal: tuple[str, ...]  # of a terminal's reversal: repeated from these
    response: tuple[str, ...]  # of an acquirer's message, read for every one
    response_later: frozenset[str]  # of an acquirer's message, read on rarer paths

    @classmethod
    def of(cls, dialect: Dialect) -> FieldsRead:
        # Card secrets are never extracted (DE 35 is, only to take a PAN from it).
        never = (dialect.sensitive_fields | DEFAULT_SENSITIVE_FIELDS) - {"35"}
        request = {*CORE_FIELDS, *dialect.match_fields, *dialect.duplicate_fields}
        request |= {*dialect.reversal.copy_fields, *dialect.response_echo_fields}
        response = {*RESPONSE_FIELDS, *dialect.match_fields}
        return cls(
            request=tuple(sorted(request - never, key=int)),
            terminal_reversal=tuple(sorted((request | set(REVERSAL_DATA)) - never, key=int)),
            response=tuple(sorted(response, key=int)),
            response_later=frozenset(RESPONSE_FIELDS_LATER) - response,
        )


@snapshot
class TerminalRequest:
    """A terminal sent a request (any MTI that is not a response)."""

    conn_id: int
    mti: str
    fields: Mapping[str, str]
    frame: Frame


@snapshot
class AcquirerResponse:
    """A response (or any message the link did not consume itself) came from the acquirer;
    ``fields``: RESPONSE_FIELDS, RESPONSE_FIELDS_LATER and the dialect's match fields, where
    present."""

    link_id: int
    mti: str
    fields: Mapping[str, str]
    frame: Frame


@snapshot
class LinkUp:
    """An acquirer link is connected (and signed on where the dialect wants it)."""

    link_id: int


@snapshot
class LinkDown:
    """An acquirer link broke: whatever was written to it and not answered is lost."""

    link_id: int


@snapshot
class TerminalClosed:
    """A terminal connection is gone. Its pending requests still belong to the core."""

    conn_id: int


@snapshot
class DeliveryResult:
    """Outcome of a SendToTerminal that asked for it (``delivery_ref`` set)."""

    delivery_ref: int
    ok: bool


@snapshot
class ReversalRequeued:
    """An operator put a failed reversal back in the queue (`iso-gateway saf retry`)."""

    reversal_id: int


@snapshot
class Draining:
    """The gateway is stopping. First (``final`` False): new requests are declined, not
    forwarded. At the end of the grace period (``final`` True): what still waits for the
    acquirer is declined to its terminal and reversed, as on a timeout."""

    final: bool = False


@snapshot
class AuthorizationsFound:
    """The answer to a ``FindAuthorizations``: what the journal holds, in every state (newest
    first; none when it could not be read)."""

    terminal_id: str
    stan: str
    records: tuple[AuthorizationRecord, ...] = ()


Event = (
    TerminalRequest
    | AcquirerResponse
    | LinkUp
    | LinkDown
    | TerminalClosed
    | DeliveryResult
    | ReversalRequeued
    | Draining
    | AuthorizationsFound
)
