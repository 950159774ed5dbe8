"""Wireshark agrees: frames our codec and framing write are what tshark's ISO 8583 dissector reads.

A capture file is built by hand (classic libpcap: Ethernet + IPv4 + TCP, checksums computed)
holding an iso87-binary conversation on one TCP port: a 0200 with the usual purchase fields,
its 0210, and an 0800 sign-on and echo test sent together in one segment (so tshark has to
split them by our 2-byte length header). tshark decodes the file; every MTI and field value
it reports must equal what we encoded, and it must find no field we did not send.

Checked against Wireshark/TShark 4.0.17 (Debian 4.0.17-0+deb12u3), whose dissector
(epan/dissectors/packet-iso8583.c) has three preferences, listed by
`tshark -G currentprefs | grep iso8583`:

    iso8583.len_endian  "Little endian" by default; we send the length big-endian
    iso8583.charset     "Digits represented as ASCII Characters" (the default; iso87-binary)
    iso8583.binencode   "Bin data represented as Hex Ascii characters" by default; our
                        bitmaps are raw bytes: "Bin data not encoded"

and names its fields iso8583.mti, iso8583.map1, iso8583.map2 and iso8583.bit2..bit128
(`tshark -G fields | grep iso8583`). It has no default port: `-d tcp.port==PORT,iso8583`.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from gateway.wire.codec import Codec
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame, encode_frame
from tests.conftest import need_tool

PORT = 8583
CLIENT = (bytes([10, 0, 0, 1]), 40001)  # the terminal side
SERVER = (bytes([10, 0, 0, 2]), PORT)  # the acquirer side

# Visa test card: fine inside a test, but never shown in a failure message.
PAN = "4761739001010119"

SALE = {
    "2": PAN, "3": "000000", "4": "000000001500", "7": "0908064519", "11": "000123",
    "12": "064519", "13": "0908", "22": "051", "37": "123456789012", "41": "TERM0001",
    "42": "MERCHANT0000001", "49": "840",
}  # fmt: skip
SALE_RESPONSE = {
    **{k: SALE[k] for k in ("2", "3", "4", "7", "11", "12", "13", "37", "41", "42", "49")},
    "39": "00",
}
SIGN_ON = {"7": "0908064520", "11": "000124", "70": "001"}
ECHO_TEST = {"7": "0908064521", "11": "000125", "70": "301"}

# (direction, messages sent together in one TCP segment)
CONVERSATION: list[tuple[str, list[tuple[str, dict[str, str]]]]] = [
    ("to_server", [("0200", SALE)]),
    ("to_client", [("0210", SALE_RESPONSE)]),
    ("to_server", [("0800", SIGN_ON), ("0800", ECHO_TEST)]),
]


# --- a capture file, by hand ------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(
    src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, ack: int, payload: bytes
) -> bytes:
    """Ethernet II + IPv4 (20 bytes) + TCP (20 bytes, PSH+ACK) around ``payload``."""
    (src_ip, src_port), (dst_ip, dst_port) = src, dst
    tcp = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, ack, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = struct.pack("!4s4sBBH", src_ip, dst_ip, 0, 6, len(tcp) + len(payload))
    tcp_sum = _checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", tcp_sum) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 1, 0x4000, 64, 6, 0,
        src_ip, dst_ip,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    ethernet = bytes.fromhex("0200000000020200000000010800")
    return ethernet + ip + tcp + payload


def _write_pcap(path: Path, packets: list[bytes]) -> None:
    """Classic libpcap: magic, version 2.4, UTC, no accuracy, snaplen, LINKTYPE_ETHERNET."""
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for index, packet in enumerate(packets):
            out.write(struct.pack("<IIII", 1_700_000_000 + index, 0, len(packet), len(packet)))
            out.write(packet)


def _capture(path: Path) -> list[tuple[str, dict[str, str]]]:
    """Write the conversation as a capture; return the messages in the order sent."""
    dialect = get_dialect("iso87-binary")
    codec = Codec(dialect)
    seq = {"to_server": 1_000, "to_client": 5_000}
    packets, sent = [], []
    for direction, messages in CONVERSATION:
        payload = b"".join(
            encode_frame(dialect.framing, Frame(codec.encode(mti, fields)))
            for mti, fields in messages
        )
        back = "to_client" if direction == "to_server" else "to_server"
        src, dst = (CLIENT, SERVER) if direction == "to_server" else (SERVER, CLIENT)
        packets.append(_packet(src, dst, seq[direction], seq[back], payload))
        seq[direction] += len(payload)
        sent += messages
    _write_pcap(path, packets)
    return sent


# --- tshark -----------------------------------------------------------------------------------

# Every preference the dissector has, set, so that a personal Wireshark profile cannot change
# what this test sees.
ISO8583_OPTIONS = [
    "-d", f"tcp.port=={PORT},iso8583",
    "-o", "iso8583.len_endian:Big endian",
    "-o", "iso8583.charset:Digits represented as ASCII Characters",
    "-o", "iso8583.binencode:Bin data not encoded",
]  # fmt: skip


def _tshark_messages(tshark: str, capture: Path) -> list[dict[str, str]]:
    """The iso8583 layer of every message tshark finds, in capture order."""
    completed = subprocess.run(
        [
            tshark, "-r", str(capture), "-n", *ISO8583_OPTIONS,
            "-T", "json", "-j", "iso8583", "--no-duplicate-keys",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # stderr may hold a harmless "Running as user root" notice; only the exit code counts.
    assert completed.returncode == 0, f"tshark failed: {completed.stderr[-500:]}"
    found: list[dict[str, str]] = []
    for packet in json.loads(completed.stdout):
        layer = packet["_source"]["layers"].get("iso8583")
        if layer is None:
            continue
        # With --no-duplicate-keys, two messages in one segment come as a list of layers.
        found += layer if isinstance(layer, list) else [layer]
    return found


def _fields_of(layer: dict[str, str]) -> dict[str, str]:
    """tshark's iso8583.bitN entries as {"N": value}."""
    prefix = "iso8583.bit"
    return {
        key.removeprefix(prefix): value
        for key, value in layer.items()
        if key.startswith(prefix) and key.removeprefix(prefix).isdigit() and key != "iso8583.bit1"
    }


def _differences(sent: dict[str, str], seen: dict[str, str]) -> list[str]:
    """Field numbers that differ, are missing or were not sent: never the values (a PAN)."""
    problems = []
    for name in sorted(set(sent) | set(seen), key=int):
        if name not in seen:
            problems.append(f"DE {name} missing")
        elif name not in sent:
            problems.append(f"DE {name} not sent")
        elif sent[name] != seen[name]:
            problems.append(f"DE {name} differs")
    return problems


@pytest.fixture(scope="module")
def tshark() -> str:
    return need_tool(shutil.which("tshark"), "tshark")


def test_tshark_decodes_what_we_encode(tshark: str, tmp_path: Path) -> None:
    capture = tmp_path / "iso87-binary.pcap"
    sent = _capture(capture)
    seen = _tshark_messages(tshark, capture)

    assert [layer.get("iso8583.mti") for layer in seen] == [mti for mti, _ in sent]
    codec = Codec(get_dialect("iso87-binary"))
    for (mti, fields), layer in zip(sent, seen, strict=True):
        problems = _differences(fields, _fields_of(layer))
        assert not problems, f"{mti}: tshark disagrees on {problems}"
        message = codec.encode(mti, fields)
        assert int(layer["iso8583.len"]) == len(message)
        assert layer["iso8583.map1"] == message[4:12].hex()  # our bitmap, as tshark shows it
        if "70" in fields:  # bit 1 set: the secondary bitmap follows the primary
            assert layer["iso8583.map2"] == message[12:20].hex()


def test_tshark_sees_the_pan_we_sent(tshark: str, tmp_path: Path) -> None:
    """The PAN is the field a codec mistake would hurt most: name it in its own test."""
    capture = tmp_path / "sale.pcap"
    _capture(capture)
    seen = _tshark_messages(tshark, capture)
    pans = [layer.get("iso8583.bit2") for layer in seen[:2]]
    assert all(pan == PAN for pan in pans), "tshark reads a different PAN (value not shown)"


def test_tshark_reads_a_little_endian_length_differently(tshark: str, tmp_path: Path) -> None:
    """The test can fail: with a little-endian length (the dissector's default) tshark must
    not find our messages, so the agreement above really depends on the bytes we wrote."""
    capture = tmp_path / "iso87-binary.pcap"
    _capture(capture)
    completed = subprocess.run(
        [
            tshark, "-r", str(capture), "-n", *ISO8583_OPTIONS,
            "-o", "iso8583.len_endian:Little endian",
            "-T", "fields", "-e", "iso8583.mti",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, f"tshark failed: {completed.stderr[-500:]}"
    assert "0200" not in completed.stdout.split()


def test_the_capture_itself_is_sound(tshark: str, tmp_path: Path) -> None:
    """Our hand-made IPv4 and TCP checksums verify (status 1 = good), and tshark reports no
    malformed packet: a disagreement above is then about ISO 8583, not the capture."""
    capture = tmp_path / "iso87-binary.pcap"
    _capture(capture)
    completed = subprocess.run(
        [
            tshark, "-r", str(capture), "-n",
            "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", *ISO8583_OPTIONS,
            "-T", "fields", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
            "-e", "_ws.malformed",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, f"tshark failed: {completed.stderr[-500:]}"
    rows = [line.split("\t") for line in completed.stdout.splitlines()]
    assert rows == [["1", "1", ""]] * len(CONVERSATION)
