"""TCP reassembly with hand-made segments: the cases a capture file may hold (no sockets)."""

from __future__ import annotations

from gateway.replay.pcapfile import TH_ACK, TH_FIN, TH_RST, TH_SYN, Segment
from gateway.replay.plan import RequestIndex
from gateway.replay.tcp import reassemble

CLIENT = ("10.0.0.1", 40000)
SERVER = ("10.0.0.2", 8583)
PSH_ACK = 0x18


class Wire:
    """Segments as a capture would list them, numbered in file order."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def add(
        self, time: float, seq: int, payload: bytes = b"", flags: int = PSH_ACK, *,
        back: bool = False, missing: int = 0,
    ) -> None:  # fmt: skip
        src, dst = (SERVER, CLIENT) if back else (CLIENT, SERVER)
        number = len(self.segments) + 1
        self.segments.append(
            Segment(number, time, "", src, dst, seq % (1 << 32), flags, payload, missing)
        )

    def handshake(self, isn: int, server_isn: int = 5000, at: float = 0.0) -> None:
        self.add(at, isn, flags=TH_SYN)
        self.add(at + 0.001, server_isn, flags=TH_SYN | TH_ACK, back=True)
        self.add(at + 0.002, isn + 1, flags=TH_ACK)


def stream(wire: Wire, index: int = 0) -> tuple[bytes, list[tuple[int, float]]]:
    connection = reassemble(wire.segments)[index]
    half = connection.half(CLIENT)
    return b"".join(c.data for c in half.chunks), [(c.offset, c.time) for c in half.chunks]


def test_in_order_and_client_from_syn() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 101, b"hello ")
    wire.add(2.0, 107, b"world")
    (connection,) = reassemble(wire.segments)
    assert connection.client == CLIENT and connection.client_from == "syn"
    data, chunks = stream(wire)
    assert data == b"hello world" and chunks == [(0, 1.0), (6, 2.0)]


def test_out_of_order_bytes_are_readable_when_the_hole_fills() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 107, b"world")  # arrives first
    wire.add(2.0, 101, b"hello ")
    data, chunks = stream(wire)
    assert data == b"hello world"
    assert chunks == [(0, 2.0), (6, 2.0)]  # "world" is readable only once "hello " is there
    half = reassemble(wire.segments)[0].half(CLIENT)
    assert half.out_of_order == 1 and half.retransmissions == 0


def test_retransmissions_and_overlaps_keep_the_first_arrival() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 101, b"hello ")
    wire.add(1.5, 101, b"hello ")  # a plain retransmission
    wire.add(2.0, 104, b"lo wor")  # overlaps: re-segmented retransmission with new bytes
    wire.add(3.0, 109, b"rld")  # overlaps by one byte
    data, chunks = stream(wire)
    assert data == b"hello world"
    assert chunks == [(0, 1.0), (6, 2.0), (9, 3.0)]
    half = reassemble(wire.segments)[0].half(CLIENT)
    assert half.retransmissions == 1 and half.overlaps == 2


def test_a_hole_never_filled_is_a_gap() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 101, b"abc")
    wire.add(2.0, 110, b"xyz")  # bytes 3..8 never captured
    half = reassemble(wire.segments)[0].half(CLIENT)
    assert half.gaps == [(3, 6)]
    assert [(c.offset, c.after_gap) for c in half.chunks] == [(0, False), (9, True)]


def test_snap_length_cut_is_a_gap() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 101, b"abc", missing=4)
    wire.add(2.0, 108, b"xyz")
    half = reassemble(wire.segments)[0].half(CLIENT)
    assert half.gaps == [(3, 4)] and half.chunks[-1].after_gap


def test_sequence_numbers_wrap() -> None:
    wire = Wire()
    isn = (1 << 32) - 3
    wire.handshake(isn)
    wire.add(1.0, isn + 1, b"ab")  # last two numbers before the wrap
    wire.add(2.0, isn + 3, b"cd")  # 0 and 1
    assert stream(wire)[0] == b"abcd"


def test_no_syn_starts_at_the_lowest_sequence_number() -> None:
    wire = Wire()
    wire.add(1.0, 2000, b"world")
    wire.add(0.5, 1994, b"hello ")
    (connection,) = reassemble(wire.segments)
    assert connection.client is None
    assert stream(wire)[0] == b"hello world"


def test_syn_ack_alone_tells_the_server() -> None:
    wire = Wire()
    wire.add(0.0, 5000, flags=TH_SYN | TH_ACK, back=True)
    wire.add(1.0, 101, b"x")
    (connection,) = reassemble(wire.segments)
    assert connection.client == CLIENT and connection.client_from == "syn-ack"


def test_the_same_ports_used_again_are_a_new_connection() -> None:
    wire = Wire()
    wire.handshake(100, at=0.0)
    wire.add(1.0, 101, b"first")
    wire.add(1.5, 106, flags=TH_FIN | TH_ACK)
    wire.add(1.6, 100, flags=TH_SYN)  # a retransmitted SYN of the first: not a new one
    wire.handshake(9000, at=5.0)
    wire.add(6.0, 9001, b"second")
    first, second = reassemble(wire.segments)
    assert stream(wire, 0)[0] == b"first" and stream(wire, 1)[0] == b"second"
    assert first.half(CLIENT).fin_time == 1.5 and second.first_time == 5.0


def test_reset_is_a_close() -> None:
    wire = Wire()
    wire.handshake(100)
    wire.add(1.0, 5001, flags=TH_RST, back=True)
    half = reassemble(wire.segments)[0].half(SERVER)
    assert half.rst_time == 1.0 and half.closed_at == 1.0


def test_request_index_exact_then_content_and_take() -> None:
    index: RequestIndex[str] = RequestIndex(["41", "11"])
    sale = {"41": "T1", "11": "000001", "4": "000000001000"}
    index.add("0200", sale, "sale")
    assert index.find("0201", sale) == "sale"  # a repeat finds its original
    rewritten = {**sale, "11": "777777"}  # a gateway that rewrites the STAN
    assert index.find("0200", rewritten) == "sale"
    assert index.find("0200", {**rewritten, "4": "000000002000"}) is None
    assert index.find("0200", sale, take=True) == "sale"
    assert index.find("0200", sale) is None  # each captured answer is used once
    reversal = {"41": "T1", "11": "000001", "39": "98"}
    index.add("0400", reversal, "terminal reversal")
    # Reversals by content only: the gateway's own, with other fields, is not the terminal's.
    assert index.find("0400", {**reversal, "39": "68"}) is None
    assert index.find("0400", reversal) == "terminal reversal"
