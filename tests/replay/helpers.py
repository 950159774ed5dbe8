"""Shared by the replay tests: the capture files, packet surgery, a replay through a gateway."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dpkt

from gateway.config import load_config
from gateway.replay.capture import Capture, Roles, read_capture
from gateway.replay.host import ReplayHost
from gateway.replay.plan import make_plan
from gateway.replay.replayer import Replayer, ReplayOptions
from gateway.replay.report import DEFAULT_IGNORED, ReplayReport, build_report
from gateway.sim.ledger import pan_of
from gateway.wire.dialect import get_dialect
from tests.e2e.harness import FAST, build_service

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def dialect_of(path: Path) -> str:
    return "cup-pos" if path.name.startswith("cup-pos") else "iso87-binary"


def capture_files() -> list[Path]:
    return sorted(CAPTURES.glob("*.pcapng"))


# --- packet surgery ---------------------------------------------------------------------------

Packet = tuple[float, bytes]


def read_packets(path: Path) -> list[Packet]:
    with path.open("rb") as file:
        head = file.read(4)
        file.seek(0)
        reader = dpkt.pcapng.Reader(file) if head == b"\n\r\r\n" else dpkt.pcap.Reader(file)
        return [(float(ts), bytes(buf)) for ts, buf in reader]


def write_packets(path: Path, packets: Iterable[Packet], *, classic: bool = False) -> Path:
    with path.open("wb") as file:
        if classic:
            writer = dpkt.pcap.Writer(file, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, buf in packets:
                writer.writepkt(buf, ts=ts)
        else:
            writer = dpkt.pcapng.Writer(file, snaplen=262144, linktype=dpkt.pcap.DLT_EN10MB)
            for ts, buf in packets:
                writer.writepkt(buf, ts=ts)
    return path


def tcp_of(buf: bytes) -> Any:
    return dpkt.ethernet.Ethernet(buf).data.data


def rebuilt(buf: bytes, **changes: Any) -> bytes:
    """The same packet with TCP fields changed (``data``, ``seq``...), checksums recomputed."""
    eth = dpkt.ethernet.Ethernet(buf)
    ip, tcp = eth.data, eth.data.data
    for name, value in changes.items():
        setattr(tcp, name, value)
    tcp.sum = 0
    ip.sum = 0
    ip.len = 0
    ip.data = tcp
    eth.data = ip
    return bytes(eth)


def message_facts(capture: Capture) -> list[tuple[Any, ...]]:
    """What must not change when only the segmentation does: each message, where and when."""
    return [
        (m.connection, m.sender, m.mti, m.stan, round(m.time, 3), m.frame.message, m.transaction)
        for m in capture.messages
    ]


def card_numbers(capture: Capture) -> set[str]:
    """Every PAN in a capture (DE 2, or from track 2)."""
    return {pan for m in capture.messages if (pan := pan_of(m.fields))}


# --- a replay through a real gateway, in this event loop --------------------------------------

_journals = itertools.count(1)


async def replay_through_gateway(
    tmp_path: Path,
    path: Path,
    *,
    dialect: str | None = None,
    gateway: Mapping[str, Any] | None = None,
    roles: Roles | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORED,
    rounds: int = 1,
    **options: Any,
) -> tuple[ReplayReport, Capture]:
    """Replay ``path`` through a GatewayService (FAST timeouts) and the built-in host;
    ``rounds`` times through the same gateway (the report of the last round)."""
    name = dialect or dialect_of(path)
    wire = get_dialect(name)
    capture = read_capture(path, wire, roles)
    plan = make_plan(capture)
    host = ReplayHost(plan, wire)
    await host.start("127.0.0.1", 0)
    settings = {
        **FAST,
        # Long enough that a loaded machine does not turn a clean capture into timeouts,
        # short enough that missing responses still time out within the replay's settle.
        "acquirer.timeout": 1.5,
        "gateway.listen": "127.0.0.1:0",
        "gateway.dialect": name,
        "acquirer.addresses": [f"127.0.0.1:{host.port}"],
        **(gateway or {}),
    }
    config = load_config(None, environ={}, overrides=settings)
    service = build_service(config, tmp_path / f"journal-{next(_journals)}.sqlite3")
    await service.start()
    replay_options = ReplayOptions(
        **{
            "speed": None,
            "response_timeout": 3.0,
            "link_wait": 5.0,
            "settle": 3.0,
            "quiet": 0.2,
            "link_settle": 0.05,
            **options,
        }
    )
    try:
        target = ("127.0.0.1", service.terminals.port)
        run = await Replayer(plan, wire, target, host, replay_options).run()
        for _ in range(rounds - 1):
            host.reset(plan)
            run = await Replayer(plan, wire, target, host, replay_options).run()
    finally:
        await service.shutdown()
        await host.stop()
    return build_report(run, target="in-process gateway", ignore=ignore), capture
