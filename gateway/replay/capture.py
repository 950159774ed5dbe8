"""A capture read as ISO 8583: connections, messages in time order, requests paired with answers.

    capture = read_capture(Path("day.pcapng"), get_dialect("iso87-binary"), Roles(ports={8583}))
    capture.transactions   # each request with its response, or why it has none

Which end of a connection is the terminal (the end that sends requests) and which the host:

1. ``Roles.host_ports`` / ``Roles.terminal_ports``, when the operator gives them;
2. else the TCP handshake: the end that sent the SYN is the terminal (it connected);
3. else the messages: the end that sent more requests (0100, 0200, 0800...) is the terminal;
4. else a guess: the end with the lower port is the host (listening ports are the low ones).

A recording made by the gateway itself holds both of its sides, one pcapng interface each
(``LEG_INTERFACES``): on the acquirer side the gateway is the terminal end. Other captures have
one leg ("").

A request without an answer is ``no_response``, or ``cut`` when the host end closed (FIN) or
reset the connection after the request and before any answer: the link dropped under it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.core.keys import values_agree, values_of
from gateway.core.mti import base_mti, is_response, is_valid_mti, response_mti
from gateway.replay.pcapfile import Endpoint, FileStats, read_segments
from gateway.replay.tcp import HalfStream, TcpConnection, reassemble
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame, FrameDecoder, FramingError, encode_frame
from gateway.wire.masking import mask_pan

Side = Literal["terminal", "host"]
Fate = Literal["answered", "no_response", "cut"]
Leg = Literal["terminal", "acquirer", ""]

# pcapng interface names of the gateway's own recordings (gateway/replay/recorder.py).
TERMINAL_LEG_INTERFACE = "iso-gateway:terminal-side"
ACQUIRER_LEG_INTERFACE = "iso-gateway:acquirer-side"
LEG_INTERFACES: Mapping[str, Leg] = {
    TERMINAL_LEG_INTERFACE: "terminal",
    ACQUIRER_LEG_INTERFACE: "acquirer",
}


@dataclass(frozen=True, slots=True)
class Roles:
    """Which connections to read and how to tell their ends apart (ports, all optional)."""

    ports: frozenset[int] = frozenset()  # read only connections with an end on one of these
    host_ports: frozenset[int] = frozenset()  # an end on one of these ports is the host
    terminal_ports: frozenset[int] = frozenset()  # an end on one of these is the terminal

    @classmethod
    def of(
        cls,
        ports: Iterable[int] = (),
        host_ports: Iterable[int] = (),
        terminal_ports: Iterable[int] = (),
    ) -> Roles:
        return cls(frozenset(ports), frozenset(host_ports), frozenset(terminal_ports))


@dataclass(slots=True, repr=False)
class CapturedMessage:
    """One ISO 8583 message as it crossed the wire. ``fields`` hold card data: never print them
    raw (``repr`` and ``masked_pan`` are safe)."""

    number: int  # from 1, in time order over the whole capture
    time: float  # when the receiver could read it whole
    connection: int
    sender: Side
    frame: Frame
    offset: int  # stream offset of its length header
    mti: str = ""  # "" when the message did not decode
    fields: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # why it did not decode (never holds field data)
    transaction: int | None = None

    @property
    def is_request(self) -> bool:
        return is_valid_mti(self.mti) and not is_response(self.mti)

    @property
    def is_response(self) -> bool:
        return is_valid_mti(self.mti) and is_response(self.mti)

    @property
    def stan(self) -> str | None:
        return self.fields.get("11")

    @property
    def terminal_id(self) -> str | None:
        return self.fields.get("41")

    @property
    def response_code(self) -> str | None:
        return self.fields.get("39")

    def masked_pan(self) -> str | None:
        pan = self.fields.get("2")
        return mask_pan(pan) if pan else None

    def __repr__(self) -> str:
        return (
            f"CapturedMessage(#{self.number}, conn={self.connection}, from={self.sender}, "
            f"mti={self.mti or '?'}, stan={self.stan!r})"
        )


@dataclass(slots=True)
class Connection:
    number: int
    terminal: Endpoint  # the end that sends requests
    host: Endpoint
    roles_from: str  # "port", "syn", "syn-ack", "messages" or "guess"
    leg: Leg
    opened_at: float
    last_at: float
    closed_at: float | None  # first FIN or RST
    closed_by: Side | None
    reset: bool
    tcp: TcpConnection
    keepalives: int = 0
    notes: list[str] = field(default_factory=list)  # what the reader repaired or could not

    def half(self, side: Side) -> HalfStream:
        return self.tcp.half(self.terminal if side == "terminal" else self.host)


@dataclass(slots=True)
class Transaction:
    """A request and its response, or why there is none."""

    number: int  # from 1, in the order the requests were sent
    request: CapturedMessage
    response: CapturedMessage | None
    fate: Fate

    @property
    def connection(self) -> int:
        return self.request.connection

    @property
    def latency(self) -> float | None:
        return None if self.response is None else self.response.time - self.request.time

    @property
    def from_terminal(self) -> bool:
        return self.request.sender == "terminal"


@dataclass(slots=True)
class Capture:
    path: str
    dialect: Dialect
    connections: list[Connection]
    messages: list[CapturedMessage]
    transactions: list[Transaction]
    unmatched_responses: list[CapturedMessage]
    file: FileStats
    ignored_connections: int = 0  # outside --port
    notes: list[str] = field(default_factory=list)  # gaps, bad frames, repairs, skipped parts

    def connection(self, number: int) -> Connection:
        return next(c for c in self.connections if c.number == number)

    def leg_of(self, item: CapturedMessage | Transaction) -> Leg:
        number = item.connection
        return self.connection(number).leg

    @property
    def legs(self) -> set[Leg]:
        return {connection.leg for connection in self.connections}

    @property
    def start_time(self) -> float:
        return min((c.opened_at for c in self.connections), default=0.0)


def read_capture(path: Path, dialect: Dialect, roles: Roles | None = None) -> Capture:
    """Read, reassemble, frame, decode and pair. Raises CaptureFileError for unreadable files;
    everything else that is odd (gaps, bad frames) is listed in ``notes``."""
    roles = roles or Roles()
    segments, stats = read_segments(path)
    codec = Codec(dialect)
    capture = Capture(str(path), dialect, [], [], [], [], stats)
    if stats.truncated_at is not None:
        capture.notes.append(f"the file ends in the middle of a packet (byte {stats.truncated_at})")
    per_connection: list[tuple[Connection, list[CapturedMessage]]] = []
    for tcp in reassemble(segments):
        if roles.ports and not {tcp.a.sender[1], tcp.b.sender[1]} & roles.ports:
            capture.ignored_connections += 1
            continue
        decoded = _read_connection(tcp, dialect, codec, roles)
        if decoded is None:
            capture.ignored_connections += 1
            capture.notes.append(
                f"connection {tcp.number} ({_show(tcp.a.sender)} <> {_show(tcp.b.sender)}) "
                f"does not carry {dialect.name} messages: skipped"
            )
            continue
        per_connection.append(decoded)
    # Renumber the ISO 8583 connections 1.. in the order they started.
    per_connection.sort(key=lambda item: item[0].opened_at)
    for number, (connection, messages) in enumerate(per_connection, start=1):
        connection.number = number
        for message in messages:
            message.connection = number
        capture.connections.append(connection)
        capture.messages += messages
    capture.messages.sort(key=lambda m: (m.time, m.connection, m.offset))
    for number, message in enumerate(capture.messages, start=1):
        message.number = number
    _pair(capture)
    for connection in capture.connections:
        capture.notes += [f"connection {connection.number}: {n}" for n in connection.notes]
    return capture


def _show(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- one connection ---------------------------------------------------------------------------


def _read_connection(
    tcp: TcpConnection, dialect: Dialect, codec: Codec, roles: Roles
) -> tuple[Connection, list[CapturedMessage]] | None:
    notes: list[str] = []
    frames = {
        half.sender: _frames(half, dialect, notes, _show(half.sender)) for half in (tcp.a, tcp.b)
    }
    if all(not found and bad for found, bad in frames.values()):
        return None  # not this dialect (or not ISO 8583 at all): no frame from byte 0 on
    decoded = {
        sender: [
            _decode(codec, frame, offset, time)
            for time, offset, frame in found
            if not frame.is_keepalive
        ]
        for sender, (found, _) in frames.items()
    }
    keepalives = sum(frame.is_keepalive for found, _ in frames.values() for _, _, frame in found)
    everything = [m for items in decoded.values() for m in items]
    if everything and all(m.error is not None for m in everything):
        return None  # frames, but not one message of this dialect in them
    terminal, roles_from = _terminal_end(tcp, roles, decoded)
    host = tcp.b.sender if terminal == tcp.a.sender else tcp.a.sender
    messages: list[CapturedMessage] = []
    for sender, items in decoded.items():
        side: Side = "terminal" if sender == terminal else "host"
        for message in items:
            message.sender = side
            message.connection = tcp.number
            messages.append(message)
    # Who closed first: the earlier FIN/RST (same timestamp: the one captured first).
    sides: tuple[tuple[Side, HalfStream], ...] = (
        ("terminal", tcp.half(terminal)),
        ("host", tcp.half(host)),
    )
    closes = [
        (time, half.close_number or 0, side, half.rst_time == time)
        for side, half in sides
        if (time := half.closed_at) is not None
    ]
    first_close = min(closes) if closes else None
    connection = Connection(
        number=tcp.number,
        terminal=terminal,
        host=host,
        roles_from=roles_from,
        leg=LEG_INTERFACES.get(tcp.interface, ""),
        opened_at=tcp.first_time,
        last_at=tcp.last_time,
        closed_at=first_close[0] if first_close else None,
        closed_by=first_close[2] if first_close else None,
        reset=first_close[3] if first_close else False,
        tcp=tcp,
        keepalives=keepalives,
        notes=notes,
    )
    for side, half in sides:
        if half.retransmissions or half.out_of_order:
            notes.append(
                f"{side} side: {half.retransmissions} retransmitted and {half.out_of_order} "
                "out-of-order segment(s), reassembled"
            )
    return connection, messages


def _frames(
    half: HalfStream, dialect: Dialect, notes: list[str], who: str
) -> tuple[list[tuple[float, int, Frame]], bool]:
    """(time, stream offset, frame) of every frame this direction carried; and whether the
    stream went bad (a framing error) before the first frame."""
    found: list[tuple[float, int, Frame]] = []
    decoder = FrameDecoder(dialect.framing)
    consumed = 0  # stream offset where the decoder started (after a gap: where it restarted)
    offsets = _FrameOffsets(dialect)
    bad = False
    for chunk in half.chunks:
        if chunk.after_gap:
            notes.append(
                f"from {who}: bytes up to stream offset {chunk.offset} were not captured; "
                "messages there are lost"
            )
            decoder = FrameDecoder(dialect.framing)
            consumed = chunk.offset
            offsets = _FrameOffsets(dialect)
        try:
            frames = decoder.feed(chunk.data)
        except FramingError as error:
            bad = bad or not found
            notes.append(f"from {who}: {_relative(error, consumed)}; the rest is skipped")
            break
        except RuntimeError:
            break  # the decoder failed on an earlier chunk (error already noted)
        for frame in frames:
            found.append((chunk.time, consumed + offsets.next(frame), frame))
        pending = decoder.pending_error
        if pending is not None:
            notes.append(f"from {who}: {_relative(pending, consumed)}; the rest is skipped")
            break
    else:
        try:
            decoder.close()
        except FramingError as error:
            notes.append(f"from {who}: capture ends inside a frame ({_relative(error, consumed)})")
    return found, bad


class _FrameOffsets:
    """Stream offsets of consecutive frames (the decoder gives frames, not where they start)."""

    def __init__(self, dialect: Dialect) -> None:
        self._framing = dialect.framing
        self._next = 0

    def next(self, frame: Frame) -> int:
        offset = self._next
        self._next += len(encode_frame(self._framing, frame))
        return offset


def _relative(error: FramingError, base: int) -> str:
    text = str(error)
    if base:
        text = text.replace(f"stream offset {error.offset}", f"stream offset {base + error.offset}")
    return text


def _decode(codec: Codec, frame: Frame, offset: int, time: float) -> CapturedMessage:
    message = CapturedMessage(0, time, 0, "terminal", frame, offset)
    try:
        view = codec.scan(frame.message)
        message.mti = view.mti
        message.fields = view.fields(view.present)
    except CodecError as error:
        message.error = str(error)
    return message


def _terminal_end(
    tcp: TcpConnection, roles: Roles, decoded: Mapping[Endpoint, list[CapturedMessage]]
) -> tuple[Endpoint, str]:
    a, b = tcp.a.sender, tcp.b.sender
    for end, other in ((a, b), (b, a)):
        if end[1] in roles.host_ports:
            return other, "port"
        if end[1] in roles.terminal_ports:
            return end, "port"
    if tcp.client is not None:
        return tcp.client, tcp.client_from
    requests = {end: sum(m.is_request for m in decoded[end]) for end in (a, b)}
    if requests[a] != requests[b]:
        return (a if requests[a] > requests[b] else b), "messages"
    return (a if a[1] > b[1] else b), "guess"


# --- pairing ------------------------------------------------------------------------------------


def _pair(capture: Capture) -> None:
    """Pair each response with the earliest unanswered request of its connection that it
    answers: MTI + 10 and the dialect's match fields equal where both carry them."""
    match_fields = capture.dialect.match_fields
    pending: dict[int, list[CapturedMessage]] = {}
    answers: dict[int, CapturedMessage] = {}  # request number -> response
    for message in capture.messages:
        if message.is_request:
            pending.setdefault(message.connection, []).append(message)
        elif message.is_response:
            waiting = pending.get(message.connection, [])
            values = values_of(message.fields, match_fields)
            for request in waiting:
                if (
                    request.sender != message.sender
                    and response_mti(request.mti) == base_mti(message.mti)
                    and values_agree(values_of(request.fields, match_fields), values)
                ):
                    waiting.remove(request)
                    answers[request.number] = message
                    break
            else:
                capture.unmatched_responses.append(message)
    number = 0
    for message in capture.messages:
        if not message.is_request:
            continue
        number += 1
        response = answers.get(message.number)
        fate: Fate = "answered"
        if response is None:
            # Cut: the end that owed the answer closed or reset the connection first, after
            # the request (a terminal that gives up and hangs up is not a cut).
            connection = capture.connection(message.connection)
            answerer: Side = "host" if message.sender == "terminal" else "terminal"
            closed = connection.closed_at
            cut = closed is not None and closed >= message.time
            fate = "cut" if cut and connection.closed_by == answerer else "no_response"
        transaction = Transaction(number, message, response, fate)
        message.transaction = number
        if response is not None:
            response.transaction = number
        capture.transactions.append(transaction)
