"""What the core asks the shell to do, in order.

The shell's one ordering promise: a send to the acquirer goes out only after every ``Persist``
emitted before it is durable in the journal ("journal before you send"). Sends to terminals and
notifications do not wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from gateway.core.records import AuthorizationRecord, ReversalRecord
from gateway.wire.framing import Frame
from gateway.wire.snapshot import snapshot


@snapshot
class Persist:
    """Store this snapshot in the journal (it supersedes earlier snapshots of the same id).

    ``urgent``: commit it now, not with the next batch, though no send waits for it: what it
    records could not be learned again after a crash (an approval that came late)."""

    record: AuthorizationRecord | ReversalRecord
    urgent: bool = False


@snapshot
class ForwardToAcquirer:
    """Write these bytes to this link, with the given fields re-encoded (STAN rewrite)."""

    link_id: int
    frame: Frame
    replace: Mapping[str, str] = field(default_factory=dict)


@snapshot
class SendToAcquirer:
    """Encode a message the gateway built itself (a reversal) and write it to this link."""

    link_id: int
    mti: str
    fields: Mapping[str, str]
    tpdu: bytes = b""
    header: bytes = b""


@snapshot
class ForwardToTerminal:
    """Write an acquirer's response to a terminal, fields re-encoded where given.

    With ``delivery_ref`` set the shell reports a DeliveryResult once the write succeeded or
    failed (an approval that cannot be delivered must be reversed).
    """

    conn_id: int
    frame: Frame
    replace: Mapping[str, str] = field(default_factory=dict)
    delivery_ref: int | None = None


@snapshot
class ReplyToTerminal:
    """Encode a response the gateway makes itself (decline 91, cached duplicate, local 0410)."""

    conn_id: int
    mti: str
    fields: Mapping[str, str]
    tpdu: bytes = b""
    header: bytes = b""
    delivery_ref: int | None = None


@snapshot
class Notify:
    """News for logs, metrics and MQTT. ``data`` never holds a full PAN or sensitive field."""

    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


@snapshot
class ReserveStans:
    """Store (like a Persist: before any send that follows it) the last STAN of the block the
    allocator has started; after a restart allocation resumes past it, so no STAN sent by an
    earlier run is sent again while the acquirer may still remember it."""

    last_stan: str


@snapshot
class FindAuthorizations:
    """Read the journal's authorizations of this terminal on this (terminal's) STAN and hand
    them back as an ``AuthorizationsFound`` event, however long that takes: a terminal's
    reversal of a sale the core no longer remembers waits for them (STAN rewrite)."""

    terminal_id: str
    stan: str


Command = (
    Persist
    | ForwardToAcquirer
    | SendToAcquirer
    | ForwardToTerminal
    | ReplyToTerminal
    | Notify
    | ReserveStans
    | FindAuthorizations
)
