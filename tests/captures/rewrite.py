"""Rewrite a real capture's TCP segmentation with dpkt: split, reorder, duplicate.

Used to make ``*_reordered.pcapng`` from a capture tshark wrote (make_captures.py) and by the
reader tests to craft more segment orders on top of the real captures. Only the segmentation
changes: the byte stream of every connection stays exactly what went over the wire, so a
correct reassembly reads the same messages, at the same times (to the microsecond).

For each TCP segment with a payload, with the given probabilities:

- split it into 2 or 3 segments (one message over several segments);
- send those pieces in reverse order (out of order);
- send a piece again just after (a retransmission / duplicate).

The pieces keep the original timestamp plus a microsecond per piece, so no message completes
later than it did on the wire. Checksums and IP lengths are recomputed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import dpkt


@dataclass(frozen=True)
class Rewrite:
    split: float = 0.5  # share of data segments cut into pieces
    reverse: float = 0.5  # share of split segments whose pieces go out last-first
    duplicate: float = 0.2  # share of data segments (or pieces) sent twice
    seed: int = 1


def rewrite(source: Path, target: Path, how: Rewrite) -> dict[str, int]:
    """Write ``target`` from ``source`` (pcap or pcapng, Ethernet); returns what was done."""
    rng = random.Random(how.seed)
    done = {"segments": 0, "split": 0, "reversed": 0, "duplicated": 0}
    with source.open("rb") as file:
        reader = _reader(file)
        linktype = reader.datalink()
        packets = [(ts, bytes(buf)) for ts, buf in reader]
    if linktype != dpkt.pcap.DLT_EN10MB:
        raise ValueError(f"{source}: only Ethernet captures are rewritten (link type {linktype})")
    out: list[tuple[float, bytes]] = []
    for ts, buf in packets:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        tcp = getattr(ip, "data", None)
        if not isinstance(tcp, dpkt.tcp.TCP) or not tcp.data:
            out.append((ts, buf))
            continue
        done["segments"] += 1
        payload = bytes(tcp.data)
        pieces = [(tcp.seq, payload)]
        if len(payload) >= 3 and rng.random() < how.split:
            count = min(rng.choice((1, 2)), len(payload) - 1)
            cuts = sorted(rng.sample(range(1, len(payload)), count))
            bounds = [0, *cuts, len(payload)]
            pieces = [
                ((tcp.seq + low) % (1 << 32), payload[low:high])
                for low, high in itertools.pairwise(bounds)
            ]
            done["split"] += 1
            if rng.random() < how.reverse:
                pieces.reverse()
                done["reversed"] += 1
        sent: list[tuple[int, bytes]] = []
        for piece in pieces:
            sent.append(piece)
            if rng.random() < how.duplicate:
                sent.append(piece)
                done["duplicated"] += 1
        for index, (seq, data) in enumerate(sent):
            out.append((ts + index * 1e-6, _packet(eth, seq, data)))
    with target.open("wb") as file:
        writer = dpkt.pcapng.Writer(file, snaplen=262144, linktype=linktype)
        for ts, buf in out:
            writer.writepkt(buf, ts=ts)
    return done


def _reader(file):  # pcap or pcapng
    head = file.read(4)
    file.seek(0)
    return dpkt.pcapng.Reader(file) if head == b"\n\r\r\n" else dpkt.pcap.Reader(file)


def _packet(template: dpkt.ethernet.Ethernet, seq: int, data: bytes) -> bytes:
    """The same Ethernet/IP/TCP headers around another piece of the stream."""
    eth = dpkt.ethernet.Ethernet(bytes(template))
    ip = eth.data
    tcp = ip.data
    tcp.seq = seq
    tcp.data = data
    tcp.sum = 0
    ip.sum = 0
    if isinstance(ip, dpkt.ip.IP):
        ip.len = 0  # recomputed
    else:
        ip.plen = len(bytes(tcp))
    ip.data = tcp
    eth.data = ip
    return bytes(eth)
