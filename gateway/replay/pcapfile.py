"""The TCP segments of a pcap or pcapng file, whatever wrote it (tcpdump, tshark, Wireshark, us).

dpkt parses the file formats and the packet headers. Classic pcap goes through
``dpkt.pcap.Reader``. For pcapng we walk the blocks ourselves, with dpkt's block classes:
``dpkt.pcapng.Reader`` keeps only the first interface, and a capture taken on several interfaces
(``tshark -i eth0 -i lo``), or our own recordings (one interface per side of the gateway), need
each packet's interface, its link type and its timestamp resolution.

Link layers read: Ethernet (with VLAN tags), Linux cooked v1/v2 (``tcpdump -i any``), BSD
loopback and raw IPv4/IPv6. IPv4 fragments and anything not TCP are skipped and counted.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt  # type: ignore[import-untyped]
import dpkt.pcapng  # type: ignore[import-untyped]
import dpkt.sll2  # type: ignore[import-untyped]

Endpoint = tuple[str, int]  # (IP address as text, port)

# Link types (https://www.tcpdump.org/linktypes.html) and what reads them.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_IP = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 1
_PCAPNG_PB = 2  # obsolete Packet Block: still read
_PCAPNG_EPB = 6
_PCAPNG_BOM = 0x1A2B3C4D
_PCAP_MAGICS = frozenset(
    {0xA1B2C3D4, 0xD4C3B2A1, 0xA1B23C4D, 0x4D3CB2A1, 0xA1B2CD34, 0x34CDB2A1}
)  # fmt: skip
_OPT_IF_NAME = 2
_OPT_IF_DESCRIPTION = 3
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14

TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10


class CaptureFileError(ValueError):
    """A file that is not a readable pcap/pcapng capture. Names the file and where."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True, slots=True, repr=False)
class Segment:
    """One TCP segment as captured. ``repr`` shows no payload: it holds card data."""

    number: int  # packet number in the file, from 1, as Wireshark numbers them
    time: float  # unix seconds
    interface: str  # the pcapng interface name; "" for pcap files or unnamed interfaces
    src: Endpoint
    dst: Endpoint
    seq: int
    flags: int
    payload: bytes
    missing: int = 0  # payload bytes the capture did not keep (snap length)

    @property
    def syn(self) -> bool:
        return bool(self.flags & TH_SYN)

    @property
    def ack(self) -> bool:
        return bool(self.flags & TH_ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & TH_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & TH_RST)

    def __repr__(self) -> str:
        return (
            f"Segment(#{self.number}, {self.src[0]}:{self.src[1]} > {self.dst[0]}:{self.dst[1]}, "
            f"seq={self.seq}, flags={self.flags:#x}, {len(self.payload)} bytes)"
        )


@dataclass(slots=True)
class FileStats:
    """What was in the file besides the TCP segments."""

    packets: int = 0
    tcp_segments: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> packets
    interfaces: list[str] = field(default_factory=list)
    truncated_at: int | None = None  # byte offset where a cut-off file ends

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class _Interface:
    name: str
    linktype: int
    divisor: float  # timestamp units per second
    offset: int  # seconds added to every timestamp


def read_segments(path: Path) -> tuple[list[Segment], FileStats]:
    """Every TCP segment of the file, in file order, and what else the file held."""
    stats = FileStats()
    try:
        with path.open("rb") as file:
            head = file.read(4)
            file.seek(0)
            if len(head) < 4:
                raise CaptureFileError(path, "too short to be a capture file")
            packets = _packets(path, file, head, stats)
            segments = [
                segment
                for number, (time, interface, linktype, data) in enumerate(packets, start=1)
                if (segment := _segment(number, time, interface, linktype, data, stats)) is not None
            ]
    except OSError as error:
        raise CaptureFileError(path, error.strerror or "cannot be read") from None
    stats.tcp_segments = len(segments)
    return segments, stats


_Packet = tuple[float, str, int, bytes]  # time, interface name, link type, data


def _packets(path: Path, file: BinaryIO, head: bytes, stats: FileStats) -> Iterator[_Packet]:
    magic_le = struct.unpack("<I", head)[0]
    if magic_le == _PCAPNG_SHB:
        yield from _pcapng_packets(path, file, stats)
    elif magic_le in _PCAP_MAGICS:
        yield from _pcap_packets(path, file, stats)
    else:
        raise CaptureFileError(path, "not a pcap or pcapng file (unknown magic number)")


def _pcap_packets(path: Path, file: BinaryIO, stats: FileStats) -> Iterator[_Packet]:
    try:
        reader = dpkt.pcap.Reader(file)
    except (ValueError, dpkt.UnpackError) as error:
        raise CaptureFileError(path, f"bad pcap header: {error}") from None
    linktype = reader.datalink()
    stats.interfaces = [""]
    try:
        for time, data in reader:
            stats.packets += 1
            yield float(time), "", linktype, bytes(data)
    except (ValueError, struct.error, dpkt.NeedData):
        stats.truncated_at = file.tell()


def _pcapng_packets(path: Path, file: BinaryIO, stats: FileStats) -> Iterator[_Packet]:
    little = True
    interfaces: list[_Interface] = []
    pm = dpkt.pcapng
    while True:
        start = file.tell()
        head = file.read(12)
        if not head:
            return
        if len(head) < 8:
            stats.truncated_at = start
            return
        block_type = struct.unpack("<I", head[:4])[0]
        if block_type == _PCAPNG_SHB:  # a new section: its own byte order and interfaces
            if len(head) < 12:
                stats.truncated_at = start
                return
            bom = struct.unpack("<I", head[8:12])[0]
            if bom == _PCAPNG_BOM:
                little = True
            elif struct.unpack(">I", head[8:12])[0] == _PCAPNG_BOM:
                little = False
            else:
                raise CaptureFileError(path, f"pcapng section at byte {start}: bad byte order")
            interfaces = []
        length = struct.unpack("<I" if little else ">I", head[4:8])[0]
        if length < 12 or length % 4:
            raise CaptureFileError(path, f"pcapng block at byte {start}: bad length {length}")
        rest = file.read(length - len(head))
        if len(rest) < length - len(head):
            stats.truncated_at = start
            return
        block = head + rest
        if block_type != _PCAPNG_SHB:
            block_type = struct.unpack("<I" if little else ">I", block[:4])[0]
        try:
            if block_type == _PCAPNG_IDB:
                idb = (pm.InterfaceDescriptionBlockLE if little else pm.InterfaceDescriptionBlock)(
                    block
                )
                interfaces.append(_interface(idb, little, len(interfaces)))
                stats.interfaces.append(interfaces[-1].name)
            elif block_type in (_PCAPNG_EPB, _PCAPNG_PB):
                if block_type == _PCAPNG_EPB:
                    packet = (pm.EnhancedPacketBlockLE if little else pm.EnhancedPacketBlock)(block)
                else:
                    packet = (pm.PacketBlockLE if little else pm.PacketBlock)(block)
                stats.packets += 1
                if packet.iface_id >= len(interfaces):
                    stats.skip("packet of an undeclared interface")
                    continue
                interface = interfaces[packet.iface_id]
                stamp = (packet.ts_high << 32) | packet.ts_low
                time = interface.offset + stamp / interface.divisor
                data = bytes(packet.pkt_data)
                yield time, interface.name, interface.linktype, data
        except (dpkt.UnpackError, struct.error) as error:
            raise CaptureFileError(path, f"pcapng block at byte {start}: {error}") from None
        # other blocks (statistics, name resolution, decryption secrets...) carry no packets


def _interface(idb: Any, little: bool, index: int) -> _Interface:
    name, divisor, offset = "", 1e6, 0
    for option in idb.opts:
        if option.code in (_OPT_IF_NAME, _OPT_IF_DESCRIPTION) and not name:
            name = bytes(option.data).rstrip(b"\x00").decode("utf-8", "replace")
        elif option.code == _OPT_IF_TSRESOL and option.data:
            value = option.data[0]
            divisor = float(2 ** (value & 0x7F) if value & 0x80 else 10 ** (value & 0x7F))
        elif option.code == _OPT_IF_TSOFFSET and len(option.data) >= 8:
            offset = struct.unpack("<q" if little else ">q", option.data[:8])[0]
    return _Interface(name or f"if{index}", idb.linktype, divisor, offset)


def _segment(
    number: int,
    time: float,
    interface: str,
    linktype: int,
    data: bytes,
    stats: FileStats,
) -> Segment | None:
    ip = _network_layer(linktype, data)
    if ip is None:
        stats.skip(f"link type {linktype} or not IP")
        return None
    if ip.p != dpkt.ip.IP_PROTO_TCP:
        stats.skip("not TCP")
        return None
    if isinstance(ip, dpkt.ip.IP):
        if ip.mf or ip.offset:
            stats.skip("IP fragment")
            return None
        family, declared = socket.AF_INET, ip.len - ip.hl * 4
    else:
        extensions = sum(len(header) for header in getattr(ip, "all_extension_headers", ()))
        family, declared = socket.AF_INET6, ip.plen - extensions
    tcp = ip.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        stats.skip("TCP header cut off or malformed")
        return None
    payload = bytes(tcp.data)
    # A packet cut by the snap length keeps fewer payload bytes than its IP header announces.
    # (A length of 0 is what a capture of TCP segmentation offload shows: trust the payload.)
    missing = max(declared - tcp.off * 4 - len(payload), 0) if declared > 0 else 0
    return Segment(
        number=number,
        time=time,
        interface=interface,
        src=(socket.inet_ntop(family, ip.src), tcp.sport),
        dst=(socket.inet_ntop(family, ip.dst), tcp.dport),
        seq=tcp.seq,
        flags=tcp.flags,
        payload=payload,
        missing=missing,
    )


def _network_layer(linktype: int, data: bytes) -> Any:
    """The IPv4 or IPv6 packet inside one captured frame, or None."""
    try:
        if linktype == LINKTYPE_ETHERNET:
            inner = dpkt.ethernet.Ethernet(data).data
        elif linktype == LINKTYPE_LINUX_SLL:
            inner = dpkt.sll.SLL(data).data
        elif linktype == LINKTYPE_LINUX_SLL2:
            inner = dpkt.sll2.SLL2(data).data
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            inner = dpkt.loopback.Loopback(data).data
        elif linktype in _RAW_IP and data:
            version = data[0] >> 4
            if version not in (4, 6):
                return None
            inner = dpkt.ip.IP(data) if version == 4 else dpkt.ip6.IP6(data)
        else:
            return None
    except (dpkt.UnpackError, struct.error, IndexError):
        return None
    if isinstance(inner, dpkt.ip.IP | dpkt.ip6.IP6):
        return inner
    return None
