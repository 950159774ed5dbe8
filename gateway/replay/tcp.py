"""TCP reassembly: captured segments -> one ordered byte stream per connection and direction.

A capture shows what crossed the wire, not what the application read: segments come out of
order, twice (retransmissions, or captured on two interfaces), overlapping, several messages in
one, one message over several. Each direction is rebuilt here by sequence number, the way the
receiving TCP stack would have delivered it:

- bytes already delivered are dropped (a retransmission or duplicate counts, nothing else);
- a segment that starts beyond the next expected byte waits until the hole is filled;
- every byte carries the time it became readable in order: the latest arrival among the
  segments up to it (a message completed by a late retransmission is read at that moment);
- a hole the capture never filled (the capture lost the packet) is a *gap*: what follows it
  is delivered as a new run, since no frame boundary is known there.

Which end is the client comes from the handshake (the SYN sender; else whoever sent SYN+ACK is
the server); without one, the caller decides (ports given by the operator, or the messages).
Sequence numbers are compared modulo 2**32, so streams that wrap are fine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.replay.pcapfile import Endpoint, Segment

_MOD = 1 << 32
_HALF = 1 << 31


def _diff(a: int, b: int) -> int:
    """a - b in sequence space: signed, modulo 2**32."""
    return (a - b + _HALF) % _MOD - _HALF


@dataclass(frozen=True, slots=True, repr=False)
class Chunk:
    """In-order stream bytes starting at ``offset``, readable from ``time`` on."""

    offset: int
    data: bytes
    time: float
    after_gap: bool = False  # the bytes before ``offset`` were never captured

    def __repr__(self) -> str:
        return f"Chunk(offset={self.offset}, {len(self.data)} bytes, time={self.time:.6f})"


@dataclass(slots=True)
class HalfStream:
    """One direction of a connection, rebuilt."""

    sender: Endpoint
    chunks: list[Chunk] = field(default_factory=list)
    segments: int = 0  # segments carrying data
    retransmissions: int = 0  # segments whose every byte was already delivered
    out_of_order: int = 0  # segments that arrived before a segment preceding them
    overlaps: int = 0  # segments partly already delivered
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (stream offset, bytes missing)
    syn_time: float | None = None
    fin_time: float | None = None
    rst_time: float | None = None

    @property
    def length(self) -> int:
        return sum(len(chunk.data) for chunk in self.chunks)

    close_number: int | None = None  # packet number of the first FIN or RST

    @property
    def closed_at(self) -> float | None:
        times = [t for t in (self.fin_time, self.rst_time) if t is not None]
        return min(times) if times else None


@dataclass(slots=True)
class TcpConnection:
    """One TCP connection: the two directions and who opened it."""

    number: int  # from 1, in order of first packet
    a: HalfStream  # the end that sent the earliest packet
    b: HalfStream
    interface: str
    first_time: float
    last_time: float
    client: Endpoint | None = None  # None: the capture holds no handshake
    client_from: str = ""  # "syn" or "syn-ack" when the handshake said

    def half(self, sender: Endpoint) -> HalfStream:
        return self.a if sender == self.a.sender else self.b

    def other(self, sender: Endpoint) -> HalfStream:
        return self.b if sender == self.a.sender else self.a

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a.sender, self.b.sender)


@dataclass(slots=True)
class _Flow:
    """Segments of one connection, gathered before reassembly."""

    first: Endpoint
    second: Endpoint
    interface: str
    segments: list[Segment] = field(default_factory=list)


def reassemble(segments: Iterable[Segment]) -> list[TcpConnection]:
    """Group segments into connections and rebuild both directions of each.

    Segments are grouped by their two ends. The same two ends used again (a new SYN with a
    new initial sequence number) start a new connection from that SYN's time on: times, not
    file order, so that a file whose packets are out of order still groups right.
    """
    by_ends: dict[tuple[Endpoint, Endpoint], list[Segment]] = {}
    for segment in segments:
        key = min(segment.src, segment.dst), max(segment.src, segment.dst)
        by_ends.setdefault(key, []).append(segment)
    flows: list[_Flow] = []
    for group in by_ends.values():
        flows += _split_reused(group)
    flows.sort(key=lambda f: min(s.time for s in f.segments))
    return [_connection(number, flow) for number, flow in enumerate(flows, start=1)]


def _split_reused(group: list[Segment]) -> list[_Flow]:
    """One flow per client SYN with its own initial sequence number (retransmitted SYNs keep
    theirs); segments go to the latest SYN at or before their time."""
    starts: dict[int, float] = {}
    for segment in group:
        if segment.syn and not segment.ack:
            starts[segment.seq] = min(starts.get(segment.seq, segment.time), segment.time)
    boundaries = sorted(starts.values())[1:]  # the first connection also takes what precedes
    flows = [
        _Flow(group[0].src, group[0].dst, group[0].interface) for _ in range(len(boundaries) + 1)
    ]
    for segment in group:
        index = sum(1 for boundary in boundaries if boundary <= segment.time)
        flows[index].segments.append(segment)
    for flow in flows:
        if flow.segments:
            first = min(flow.segments, key=lambda s: (s.time, s.number))
            flow.first, flow.second = first.src, first.dst
    return [flow for flow in flows if flow.segments]


def _connection(number: int, flow: _Flow) -> TcpConnection:
    # Arrival order is time order (a merged or rewritten file may list packets otherwise).
    segments = sorted(flow.segments, key=lambda s: (s.time, s.number))
    client: Endpoint | None = None
    client_from = ""
    for segment in segments:
        if segment.syn and not segment.ack:
            client, client_from = segment.src, "syn"
            break
    if client is None:
        for segment in segments:
            if segment.syn and segment.ack:
                client, client_from = segment.dst, "syn-ack"
                break
    halves = {flow.first: HalfStream(flow.first), flow.second: HalfStream(flow.second)}
    for sender, half in halves.items():
        _rebuild(half, [s for s in segments if s.src == sender])
    return TcpConnection(
        number=number,
        a=halves[flow.first],
        b=halves[flow.second],
        interface=flow.interface,
        first_time=segments[0].time,
        last_time=segments[-1].time,
        client=client,
        client_from=client_from,
    )


def _rebuild(half: HalfStream, segments: list[Segment]) -> None:
    """Reassemble one direction from its segments (in arrival order)."""
    base: int | None = None
    for segment in segments:
        if segment.syn and half.syn_time is None:
            half.syn_time = segment.time
            base = (segment.seq + 1) % _MOD  # the SYN takes one sequence number
        if segment.fin and half.fin_time is None:
            half.fin_time = segment.time
        if segment.rst and half.rst_time is None:
            half.rst_time = segment.time
        if (segment.fin or segment.rst) and half.close_number is None:
            half.close_number = segment.number
    data = [s for s in segments if s.payload or s.missing]
    if not data:
        return
    if base is None:
        # No SYN captured: the stream starts at the lowest sequence number seen.
        first = data[0].seq
        base = (first + min(_diff(s.seq, first) for s in data)) % _MOD
    placed: list[_Placed] = []
    for segment in data:
        start = _diff(segment.seq, base) + (1 if segment.syn else 0)  # data on a SYN: TFO
        if start + len(segment.payload) + segment.missing > 0:  # else a stray pre-SYN copy
            placed.append(_Placed(max(start, 0), segment, segment.payload[max(-start, 0) :]))
    half.segments = len(placed)
    half.out_of_order = _count_out_of_order(placed)
    _deliver(half, placed)


@dataclass(frozen=True, slots=True)
class _Placed:
    start: int  # stream offset of the first payload byte
    segment: Segment
    payload: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.payload) + self.segment.missing


def _count_out_of_order(placed: list[_Placed]) -> int:
    """Segments that, when they arrived, brought bytes below the highest byte already seen."""
    covered: list[list[int]] = []  # merged [start, end) intervals seen so far, sorted
    highest = 0
    count = 0
    for item in placed:  # capture order
        start, end = item.start, item.end
        if start < highest and _brings_new_bytes(covered, start, min(end, highest)):
            count += 1
        highest = max(highest, end)
        _cover(covered, start, end)
    return count


def _brings_new_bytes(covered: list[list[int]], start: int, end: int) -> bool:
    for low, high in covered:
        if low <= start < high:
            start = high
        if start >= end:
            return False
    return start < end


def _cover(covered: list[list[int]], start: int, end: int) -> None:
    merged: list[list[int]] = []
    for low, high in covered:
        if high < start or low > end:
            merged.append([low, high])
        else:
            start, end = min(start, low), max(end, high)
    merged.append([start, end])
    merged.sort()
    covered[:] = merged


def _deliver(half: HalfStream, placed: list[_Placed]) -> None:
    """Walk the segments in sequence order and emit the bytes as the receiver reads them."""
    next_offset = 0
    ready_time = float("-inf")
    after_gap = False
    # Same start: the earlier copy first, so that bytes carry their first arrival time.
    for item in sorted(placed, key=lambda p: (p.start, p.segment.time, p.segment.number)):
        if item.end <= next_offset:
            half.retransmissions += 1
            continue
        payload = item.payload
        if item.start > next_offset:
            half.gaps.append((next_offset, item.start - next_offset))
            after_gap = True
            next_offset = item.start
        elif item.start < next_offset:
            half.overlaps += 1
            payload = payload[next_offset - item.start :]
        ready_time = max(ready_time, item.segment.time)
        if payload:
            half.chunks.append(Chunk(next_offset, payload, ready_time, after_gap))
            after_gap = False
            next_offset += len(payload)
        if item.segment.missing:
            # The snap length cut this segment: its tail is a gap in the stream.
            half.gaps.append((next_offset, item.segment.missing))
            after_gap = True
            next_offset += item.segment.missing
