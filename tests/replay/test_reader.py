"""Reading captures: real tshark files, and crafted segment orders on top of them."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from gateway.replay.capture import Roles, read_capture
from gateway.replay.pcapfile import CaptureFileError, read_segments
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import FrameDecoder
from tests.captures.rewrite import Rewrite, rewrite

from .helpers import (
    CAPTURES,
    capture_files,
    dialect_of,
    message_facts,
    read_packets,
    rebuilt,
    tcp_of,
    write_packets,
)

DROPPED = CAPTURES / "iso87-binary_dropped.pcapng"
CLEAN = CAPTURES / "iso87-binary_clean.pcapng"
ISO87 = get_dialect("iso87-binary")
SYN, ACK = 0x02, 0x10


def read(path: Path, roles: Roles | None = None):
    return read_capture(path, get_dialect(dialect_of(path)), roles)


@pytest.mark.parametrize("path", capture_files(), ids=lambda p: p.name)
def test_every_capture_reads_cleanly(path: Path) -> None:
    capture = read(path)
    assert capture.transactions
    assert not capture.unmatched_responses
    assert all(m.error is None for m in capture.messages)
    for connection in capture.connections:
        # tshark saw every handshake: the terminal is the end that sent the SYN.
        assert connection.roles_from == "syn"
        assert connection.host[1] in range(18583, 18589)  # the simulator's port
    answered = [t for t in capture.transactions if t.response is not None]
    assert all(t.response.sender == "host" and t.request.sender == "terminal" for t in answered)
    assert all(t.response.stan == t.request.stan for t in answered)
    assert all(t.latency is not None and t.latency >= 0 for t in answered)


@pytest.mark.parametrize("dialect", ["iso87-binary", "cup-pos"])
def test_the_scenarios_show_what_happened(dialect: str) -> None:
    clean = read(CAPTURES / f"{dialect}_clean.pcapng")
    dropped = read(CAPTURES / f"{dialect}_dropped.pcapng")
    cut = read(CAPTURES / f"{dialect}_linkcut.pcapng")
    assert {t.fate for t in clean.transactions} == {"answered"}
    assert {t.fate for t in dropped.transactions} == {"answered", "no_response"}
    assert {t.fate for t in cut.transactions} == {"answered", "cut"}
    # A cut connection ends there: the terminal reconnects, so there are more connections.
    assert len(cut.connections) > len(clean.connections)
    for txn in cut.transactions:
        connection = cut.connection(txn.connection)
        if txn.fate == "cut":
            assert connection.closed_by == "host"
            last = max(m.time for m in cut.messages if m.connection == connection.number)
            assert txn.request.time == last
    for txn in dropped.transactions:
        if txn.fate == "no_response":
            assert dropped.connection(txn.connection).closed_by == "terminal"


def test_several_messages_in_one_segment() -> None:
    """The pipelined clean capture has segments carrying two whole messages."""
    segments, _ = read_segments(CLEAN)
    most = max(len(FrameDecoder(ISO87.framing).feed(s.payload)) for s in segments if s.payload)
    assert most >= 2
    capture = read(CLEAN)
    assert len(capture.messages) == 2 * len(capture.transactions)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_split_reversed_and_duplicated_segments_read_the_same(tmp_path: Path, seed: int) -> None:
    original = read(DROPPED)
    target = tmp_path / "rewritten.pcapng"
    done = rewrite(DROPPED, target, Rewrite(split=1.0, reverse=0.7, duplicate=0.5, seed=seed))
    assert done["split"] and done["reversed"] and done["duplicated"]
    again = read(target)
    assert message_facts(again) == message_facts(original)
    assert [t.fate for t in again.transactions] == [t.fate for t in original.transactions]
    halves = [c.half(side) for c in again.connections for side in ("terminal", "host")]
    assert sum(h.out_of_order for h in halves) > 0
    assert sum(h.retransmissions for h in halves) > 0


def test_the_committed_reordered_capture_reads_like_its_source() -> None:
    reordered = read(CAPTURES / "iso87-binary_dropped_reordered.pcapng")
    assert message_facts(reordered) == message_facts(read(DROPPED))
    assert any("out-of-order" in note for note in reordered.notes)


def test_every_packet_shuffled_keeps_messages_and_times(tmp_path: Path) -> None:
    """Packets in any file order (merged from two interfaces, say), timestamps kept."""
    packets = read_packets(DROPPED)
    random.Random(5).shuffle(packets)
    shuffled = read(write_packets(tmp_path / "shuffled.pcapng", packets))
    assert message_facts(shuffled) == message_facts(read(DROPPED))


def test_every_segment_twice(tmp_path: Path) -> None:
    packets = [p for packet in read_packets(CLEAN) for p in (packet, packet)]
    twice = read(write_packets(tmp_path / "twice.pcapng", packets))
    assert message_facts(twice) == message_facts(read(CLEAN))


def test_sequence_numbers_wrapping_around(tmp_path: Path) -> None:
    """Every stream starts 50 bytes below 2**32, so its sequence numbers wrap to 0."""
    packets = read_packets(DROPPED)
    isn = {
        (tcp.sport, tcp.dport): tcp.seq
        for tcp in (tcp_of(buf) for _, buf in packets)
        if tcp.flags & SYN
    }
    shift = {direction: ((1 << 32) - 50 - seq) for direction, seq in isn.items()}
    wrapped_packets = []
    for ts, buf in packets:
        tcp = tcp_of(buf)
        changes = {"seq": (tcp.seq + shift[(tcp.sport, tcp.dport)]) % (1 << 32)}
        if tcp.flags & ACK:
            changes["ack"] = (tcp.ack + shift[(tcp.dport, tcp.sport)]) % (1 << 32)
        wrapped_packets.append((ts, rebuilt(buf, **changes)))
    crossed = [tcp_of(b).seq for _, b in wrapped_packets if tcp_of(b).data]
    assert min(crossed) < 1000 and max(crossed) > (1 << 32) - 1000  # both sides of the wrap
    wrapped = read(write_packets(tmp_path / "wrapped.pcapng", wrapped_packets))
    assert message_facts(wrapped) == message_facts(read(DROPPED))


def test_classic_pcap_reads_like_pcapng(tmp_path: Path) -> None:
    classic = write_packets(tmp_path / "dropped.pcap", read_packets(DROPPED), classic=True)
    assert classic.read_bytes()[:4] == struct.pack("<I", 0xA1B2C3D4)
    assert message_facts(read(classic)) == message_facts(read(DROPPED))


def test_no_handshake_roles_from_messages_or_ports(tmp_path: Path) -> None:
    """A capture started after the connections were up: no SYN to tell who is who."""
    packets = [(ts, buf) for ts, buf in read_packets(DROPPED) if not tcp_of(buf).flags & SYN]
    path = write_packets(tmp_path / "late-start.pcapng", packets)
    by_messages = read(path)
    assert {c.roles_from for c in by_messages.connections} == {"messages"}
    assert message_facts(by_messages) == message_facts(read(DROPPED))
    by_port = read(path, Roles.of(host_ports=[18584]))
    assert {c.roles_from for c in by_port.connections} == {"port"}
    # The operator may say the opposite: the ends swap, and nothing pairs any more.
    swapped = read(path, Roles.of(terminal_ports=[18584]))
    assert {m.sender for m in swapped.messages if m.mti == "0200"} == {"host"}


def test_a_lost_segment_is_reported_and_the_rest_still_reads(tmp_path: Path) -> None:
    packets = read_packets(DROPPED)
    lost_index = next(
        i for i, (_, buf) in enumerate(packets) if tcp_of(buf).data and tcp_of(buf).dport != 18584
    )
    lost_conn = tcp_of(packets[lost_index][1]).dport
    del packets[lost_index]
    damaged = read(write_packets(tmp_path / "lost.pcapng", packets))
    assert any("were not captured" in note for note in damaged.notes)
    original = read(DROPPED)
    # Connections that lost nothing are read whole.
    untouched = {
        c.number for c in damaged.connections if lost_conn not in (c.terminal[1], c.host[1])
    }
    assert untouched
    facts = [f for f in message_facts(damaged) if f[0] in untouched]
    assert facts == [f for f in message_facts(original) if f[0] in untouched]


def test_port_filter_and_other_traffic(tmp_path: Path) -> None:
    capture = read(DROPPED, Roles.of(ports=[9999]))
    assert not capture.connections and capture.ignored_connections == 4
    # Another dialect's framing finds nothing it can read: the connections are skipped, said.
    wrong = read_capture(DROPPED, get_dialect("iso87-ascii"))
    assert not wrong.messages
    assert any("does not carry" in note for note in wrong.notes)


def test_truncated_file_reads_up_to_the_cut(tmp_path: Path) -> None:
    data = DROPPED.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) // 2])
    capture = read(cut)
    assert capture.file.truncated_at is not None
    assert 0 < len(capture.transactions) < 30


def test_not_a_capture(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not a pcap file\n")
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng file"):
        read(bogus)
    with pytest.raises(CaptureFileError, match=r"cannot be read|No such file"):
        read(tmp_path / "absent.pcapng")
