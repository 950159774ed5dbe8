"""Write TCP conversations as a pcapng file that tshark, Wireshark and our reader open.

The gateway does not see packets, only connections and frames, so the recorder makes the
packets up: for each connection a three-way handshake (SYN, SYN+ACK, ACK), each frame as data
segments of at most one MSS (PSH+ACK, sequence and acknowledgement numbers counted exactly as a
TCP stack would), and FIN+ACK from each end when it closes. Addresses and ports are the real
ones. Ethernet II frames around IPv4 or IPv6, checksums computed (dpkt's Internet checksum;
the section and interface blocks are dpkt's).

One pcapng interface per side of the gateway, so a capture tool can tell the terminal side
from the acquirer side (and so can ``read_capture``: ``LEG_INTERFACES``).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import dpkt  # type: ignore[import-untyped]
import dpkt.pcapng  # type: ignore[import-untyped]

from gateway.replay.pcapfile import TH_ACK, TH_FIN, TH_SYN, Endpoint

MSS = 1460
SNAPLEN = 262_144
TH_PSH = 0x08
_MOD = 1 << 32
_CLIENT_MAC = bytes.fromhex("020000000001")
_SERVER_MAC = bytes.fromhex("020000000002")
_OPT_COMMENT = 1
_OPT_SHB_USERAPPL = 4
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9
_EPB = 6
_EPB_OVERHEAD = 32  # block header (28 bytes) and trailing length (4)
_TCP = 6


class PcapngFile:
    """A pcapng file being written: one section, the given interfaces (Ethernet), microseconds."""

    def __init__(self, file: BinaryIO, interfaces: Sequence[str], comment: str = "") -> None:
        self._file = file
        pm = dpkt.pcapng
        shb_options = [_option(_OPT_SHB_USERAPPL, b"iso-gateway")]
        if comment:
            shb_options.insert(0, _option(_OPT_COMMENT, comment.encode()))
        shb = pm.SectionHeaderBlockLE(opts=[*shb_options, pm.PcapngOptionLE()])
        file.write(bytes(shb))
        for name in interfaces:
            idb = pm.InterfaceDescriptionBlockLE(
                linktype=dpkt.pcap.DLT_EN10MB,
                snaplen=SNAPLEN,
                opts=[
                    _option(_OPT_IF_NAME, name.encode()),
                    _option(_OPT_IF_TSRESOL, b"\x06"),
                    pm.PcapngOptionLE(),
                ],
            )
            file.write(bytes(idb))
        self.bytes_written = file.tell()

    def write(self, interface: int, time: float, packet: bytes) -> None:
        """One Enhanced Packet Block (little-endian, as the section header says)."""
        stamp = round(time * 1e6)
        size = len(packet)
        total = _EPB_OVERHEAD + size + (-size % 4)
        data = b"".join((
            struct.pack("<7I", _EPB, total, interface, stamp >> 32, stamp & 0xFFFFFFFF, size, size),
            packet,
            bytes(-size % 4),
            struct.pack("<I", total),
        ))  # fmt: skip
        self._file.write(data)
        self.bytes_written += total

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _option(code: int, data: bytes) -> object:
    return dpkt.pcapng.PcapngOptionLE(code=code, data=data)


@dataclass(slots=True)
class _Tcp:
    client: Endpoint
    server: Endpoint
    client_seq: int  # next sequence number the client sends
    server_seq: int
    client_closed: bool = False
    server_closed: bool = False


class TcpSynthesizer:
    """Connection events and payloads -> Ethernet/IP/TCP packets with consistent numbers."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._connections: dict[tuple[Endpoint, Endpoint], _Tcp] = {}

    def is_open(self, client: Endpoint, server: Endpoint) -> bool:
        return (client, server) in self._connections

    def open(self, client: Endpoint, server: Endpoint) -> list[bytes]:
        """SYN, SYN+ACK, ACK. A connection already open on these ends is first forgotten."""
        self._connections.pop((client, server), None)
        tcp = _Tcp(client, server, self._rng.getrandbits(32), self._rng.getrandbits(32))
        self._connections[(client, server)] = tcp
        packets = [
            _packet(client, server, tcp.client_seq, 0, TH_SYN, b"", True),
            _packet(
                server, client, tcp.server_seq, tcp.client_seq + 1, TH_SYN | TH_ACK, b"", False
            ),
        ]
        tcp.client_seq = (tcp.client_seq + 1) % _MOD
        tcp.server_seq = (tcp.server_seq + 1) % _MOD
        packets.append(_packet(client, server, tcp.client_seq, tcp.server_seq, TH_ACK, b"", True))
        return packets

    def data(
        self, client: Endpoint, server: Endpoint, from_client: bool, payload: bytes
    ) -> list[bytes]:
        """The payload as PSH+ACK segments of at most one MSS (the connection is opened first
        if it was never seen: a capture started while it was up)."""
        packets = [] if self.is_open(client, server) else self.open(client, server)
        tcp = self._connections[(client, server)]
        for start in range(0, len(payload), MSS) if payload else ():
            piece = payload[start : start + MSS]
            flags = TH_PSH | TH_ACK
            if from_client:
                packets.append(
                    _packet(client, server, tcp.client_seq, tcp.server_seq, flags, piece, True)
                )
                tcp.client_seq = (tcp.client_seq + len(piece)) % _MOD
            else:
                packets.append(
                    _packet(server, client, tcp.server_seq, tcp.client_seq, flags, piece, False)
                )
                tcp.server_seq = (tcp.server_seq + len(piece)) % _MOD
        return packets

    def close(self, client: Endpoint, server: Endpoint, by_client: bool) -> list[bytes]:
        """FIN+ACK from the closing end, FIN+ACK back, the last ACK; then forgotten."""
        tcp = self._connections.pop((client, server), None)
        if tcp is None:
            return []
        first, second = (client, server) if by_client else (server, client)
        seq = {client: tcp.client_seq, server: tcp.server_seq}
        fin = TH_FIN | TH_ACK
        packets = [_packet(first, second, seq[first], seq[second], fin, b"", by_client)]
        seq[first] = (seq[first] + 1) % _MOD
        packets.append(_packet(second, first, seq[second], seq[first], fin, b"", not by_client))
        seq[second] = (seq[second] + 1) % _MOD
        packets.append(_packet(first, second, seq[first], seq[second], TH_ACK, b"", by_client))
        return packets

    def open_connections(self) -> list[tuple[Endpoint, Endpoint]]:
        return list(self._connections)


def _packet(
    src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, payload: bytes, from_client: bool
) -> bytes:
    """Ethernet II + IPv4 (or IPv6 when either end is IPv6) + TCP, checksums computed.

    Built with struct rather than dpkt's packet classes: the recorder writes one of these per
    frame on a thread that shares the interpreter with the gateway, so every microsecond counts.
    """
    source, target = _packed(src[0]), _packed(dst[0])
    if len(source) != len(target):  # one end IPv6: both as IPv6 (IPv4-mapped)
        source, target = _as_v6(source), _as_v6(target)
    tcp = struct.pack(
        "!HHIIBBHHH", src[1], dst[1], seq % _MOD, ack % _MOD, 5 << 4, flags, 65535, 0, 0
    )
    segment_length = len(tcp) + len(payload)
    if len(source) == 4:
        pseudo = struct.pack("!4s4sBBH", source, target, 0, _TCP, segment_length)
        checksum = dpkt.in_cksum(pseudo + tcp + payload)
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + segment_length, 0, 0x4000, 64, _TCP, 0, source, target
        )
        ip = ip[:10] + struct.pack("!H", dpkt.in_cksum(ip)) + ip[12:]
        ethertype = b"\x08\x00"
    else:
        pseudo = source + target + struct.pack("!IxxxB", segment_length, _TCP)
        checksum = dpkt.in_cksum(pseudo + tcp + payload)
        ip = struct.pack("!IHBB16s16s", 6 << 28, segment_length, _TCP, 64, source, target)
        ethertype = b"\x86\xdd"
    tcp = tcp[:16] + struct.pack("!H", checksum) + tcp[18:]
    macs = _SERVER_MAC + _CLIENT_MAC if from_client else _CLIENT_MAC + _SERVER_MAC  # dst, src
    return b"".join((macs, ethertype, ip, tcp, payload))


@functools.lru_cache(maxsize=4096)
def _packed(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).packed
    except ValueError:
        return bytes(4)  # an address the transport did not tell: 0.0.0.0


def _as_v6(address: bytes) -> bytes:
    return address if len(address) == 16 else bytes(10) + b"\xff\xff" + address
