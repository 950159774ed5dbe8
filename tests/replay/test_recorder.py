"""The gateway's recording ([capture]): safe to share, read by tshark and by us, replayable."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from gateway.app import build_components, build_service
from gateway.config import CaptureSection, load_config
from gateway.io.tap import Address, Side
from gateway.replay.capture import ACQUIRER_LEG_INTERFACE, TERMINAL_LEG_INTERFACE, read_capture
from gateway.replay.recorder import CaptureRecorder
from gateway.replay.report import render
from gateway.sim.ledger import pan_of
from gateway.sim.rules import Rule
from gateway.sim.terminals import TerminalFleet
from gateway.wire.codec import Codec
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame
from gateway.wire.masking import luhn_ok
from tests.conftest import need_tool
from tests.e2e.harness import PIN_BLOCK, TRACK2, auth, start_stack, stop_stack

from .helpers import replay_through_gateway

ISO87 = get_dialect("iso87-binary")


class Spy:
    """Passes everything to the recorder and keeps the raw frames (what a test must not find
    in the file)."""

    def __init__(self, inner: CaptureRecorder) -> None:
        self.inner = inner
        self.frames: list[Frame] = []

    def connection_opened(self, side: Side, local: Address, peer: Address) -> None:
        self.inner.connection_opened(side, local, peer)

    def frame(self, side: Side, inbound: bool, local: Address, peer: Address, frame: Frame) -> None:
        self.frames.append(frame)
        self.inner.frame(side, inbound, local, peer, frame)

    def connection_closed(self, side: Side, local: Address, peer: Address) -> None:
        self.inner.connection_closed(side, local, peer)


async def record(
    tmp_path: Path, *, rules: list[Rule] | None = None, **settings: Any
) -> tuple[CaptureRecorder, Spy]:
    """Traffic through a gateway with the recorder on: a fleet (chip, swipe, manual entry) and
    one terminal sending a track-2 + PIN request."""
    stack = await start_stack(tmp_path, rules=rules or [])
    recorder = CaptureRecorder(
        CaptureSection(enabled=True, **settings), tmp_path / "captures", stack.service.dialect
    )
    await recorder.start()
    spy = Spy(recorder)
    stack.service.tap = spy  # after start: the acquirer link's handshake is made up in the file
    try:
        terminal = await stack.terminal()
        answer = await terminal.send("0200", auth(999_001, track2=True))
        assert answer is not None and answer.get("39") == "00"
        fleet = TerminalFleet(
            "127.0.0.1", stack.port, "iso87-binary", terminals=3, count=24, timeout=3.0, seed=5
        )
        await fleet.run()
        await stack.no_reversals_open()
        dropped = stack.simulator.counters.faults["drop"]
    finally:
        await stop_stack(stack)
        await recorder.stop()
    return recorder, spy, dropped


def originals(spy: Spy) -> tuple[set[str], set[str]]:
    """PANs, and track/PIN/ICC values (as they would sit in the file), the gateway saw."""
    codec = Codec(ISO87)
    pans: set[str] = set()
    secrets: set[str] = set()
    for frame in spy.frames:
        fields = codec.decode(frame.message).fields
        if pan := pan_of(fields):
            pans.add(pan)
        for name in ("35", "52", "55"):
            if name in fields:
                secrets.add(fields[name])
    return pans, secrets


async def test_recording_is_tokenized_and_readable(tmp_path: Path) -> None:
    recorder, spy, _ = await record(tmp_path)
    assert recorder.counters.files == 1 and recorder.counters.dropped == 0
    assert recorder.counters.frames == len(spy.frames) > 50
    (path,) = (tmp_path / "captures").glob("gateway-*.pcapng")
    data = path.read_bytes()
    pans, secrets = originals(spy)
    assert TRACK2 in secrets and PIN_BLOCK in secrets and len(pans) > 5
    for pan in pans:
        assert pan.encode() not in data  # neither as text
    for secret in secrets:
        assert secret.encode() not in data
        if all(c in "0123456789ABCDEF" for c in secret) and len(secret) % 2 == 0:
            assert bytes.fromhex(secret) not in data  # nor as binary (PIN block, ICC data)
    capture = read_capture(path, ISO87)
    assert capture.legs == {"terminal", "acquirer"}
    assert not capture.notes
    tokens = {pan for m in capture.messages if (pan := pan_of(m.fields))}  # DE 2 or track 2
    assert tokens and all(luhn_ok(t) for t in tokens)
    assert not tokens & pans
    assert {t[:6] + t[-4:] for t in tokens} <= {p[:6] + p[-4:] for p in pans}
    # One token per card, everywhere in the file: requests, responses, both sides.
    assert len(tokens) == len(pans)
    for message in capture.messages:
        for zeroed in ("52", "55"):  # PIN block, ICC data: kept as zeros of the same length
            assert set(message.fields.get(zeroed, "0")) == {"0"}
        if "35" in message.fields:
            token, rest = message.fields["35"].split("=")
            assert token in tokens and set(rest[7:]) <= {"0"}
    # Every request on the terminal side has its answer; the acquirer side too.
    assert all(t.response is not None for t in capture.transactions)
    sides = {capture.leg_of(t) for t in capture.transactions}
    assert sides == {"terminal", "acquirer"}


async def test_tshark_reads_the_recording(tmp_path: Path) -> None:
    tshark = need_tool(shutil.which("tshark"), "tshark")
    await record(tmp_path)
    (path,) = (tmp_path / "captures").glob("gateway-*.pcapng")
    result = subprocess.run(
        [tshark, "-r", str(path), "-o", "tcp.check_checksum:TRUE", "-T", "json",
         "-e", "frame.interface_name", "-e", "tcp.checksum.status", "-e", "tcp.len",
         "-e", "_ws.expert.message", "-e", "_ws.malformed"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    packets = [p["_source"]["layers"] for p in json.loads(result.stdout)]
    assert packets
    names = {p["frame.interface_name"][0] for p in packets}
    assert names == {TERMINAL_LEG_INTERFACE, ACQUIRER_LEG_INTERFACE}
    assert all(p["tcp.checksum.status"] == ["1"] for p in packets)  # verified good
    assert not any("_ws.malformed" in p for p in packets)
    # Only the handshake and the closing are remarked on: no retransmission, lost segment,
    # unseen ACK or anything else a made-up TCP stream could get wrong.
    remarks = {
        m for p in packets for text in p.get("_ws.expert.message", []) for m in text.split(",")
    }
    benign = ("Connection establish", "Connection finish", "This frame initiates the connection",
              "This frame undergoes the connection")  # fmt: skip
    assert remarks and all(remark.startswith(benign) for remark in remarks), remarks
    data_bytes = sum(int(p["tcp.len"][0]) for p in packets)
    assert data_bytes > 0


async def test_a_recording_replays_the_same_and_a_tampered_one_differs(tmp_path: Path) -> None:
    """Both sides recorded, with the acquirer dropping some answers: the replay through a new
    gateway gives the same declines (91) and the same reversals. Then the file is tampered:
    one answer the terminal got is changed from 00 to 05, and the replay says so."""
    fleet_only = frozenset({"TERM0002", "TERM0003"})
    drop = Rule(name="drop some", terminal_id=fleet_only, fault="drop", times=2)
    _, _, dropped = await record(tmp_path / "rec", rules=[drop])
    assert dropped == 2
    (path,) = (tmp_path / "rec" / "captures").glob("gateway-*.pcapng")
    report, capture = await replay_through_gateway(tmp_path, path, dialect="iso87-binary")
    assert report.ok, render(report)
    declined = [t for t in report.transactions if t.captured == "91"]
    assert len(declined) == dropped
    assert all(t.replayed == "91" and len(t.reversals) == 1 for t in declined)
    assert all(t.host_then == "no_response" and t.reversal_expected for t in declined)
    assert all(t.verdict == "same" for t in report.transactions)
    assert len(report.reversals) == dropped

    # Tamper: the terminal side's copy of one approval (the acquirer side keeps its 00).
    codec = Codec(ISO87)
    approval = next(
        t.response
        for t in capture.transactions
        if capture.leg_of(t) == "terminal" and t.response and t.response.response_code == "00"
    )
    fields = dict(codec.decode(approval.frame.message).fields, **{"39": "05"})
    tampered_message = codec.encode(approval.mti, fields)
    data = path.read_bytes()
    at = data.rindex(approval.frame.message)  # the terminal side is written after the acquirer's
    tampered = tmp_path / "tampered.pcapng"
    tampered.write_bytes(data[:at] + tampered_message + data[at + len(approval.frame.message) :])
    report, _ = await replay_through_gateway(tmp_path, tampered, dialect="iso87-binary")
    assert not report.ok
    (differing,) = [t for t in report.transactions if t.verdict == "differs"]
    assert differing.number == approval.transaction
    assert differing.differences == ["response code 05 then, 00 now"]


async def test_a_writer_that_falls_behind_drops_and_counts(tmp_path: Path) -> None:
    recorder = CaptureRecorder(
        CaptureSection(enabled=True, queue_size=2), tmp_path / "captures", ISO87
    )
    inside, release = threading.Event(), threading.Event()
    write = recorder._write

    def slow_write(event: Any) -> None:
        inside.set()
        release.wait(10)
        write(event)

    recorder._write = slow_write  # type: ignore[method-assign]
    await recorder.start()
    local, peer = ("127.0.0.1", 8583), ("127.0.0.1", 40000)
    recorder.connection_opened("terminal", local, peer)
    assert await asyncio.to_thread(inside.wait, 10)  # the writer holds the first event
    message = Codec(ISO87).encode("0800", {"11": "000001", "70": "301"})
    for _ in range(10):
        recorder.frame("terminal", True, local, peer, Frame(message))  # never blocks
    assert recorder.counters.dropped == 8  # 2 queued behind the one being written
    release.set()
    await recorder.stop()
    assert recorder.counters.frames == 2
    (path,) = (tmp_path / "captures").glob("*.pcapng")
    assert len(read_capture(path, ISO87).messages) == 2


async def test_files_rotate_and_the_oldest_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "captures"
    clock = iter(float(1_700_000_000 + n) for n in range(10_000))
    recorder = CaptureRecorder(
        CaptureSection(enabled=True, rotate_mb=0.002, keep_files=3),
        directory,
        ISO87,
        clock=lambda: next(clock),
    )
    await recorder.start()
    codec = Codec(ISO87)
    local, peer = ("127.0.0.1", 8583), ("10.1.2.3", 40000)
    recorder.connection_opened("terminal", local, peer)
    for stan in range(1, 80):
        fields = auth(stan)
        recorder.frame("terminal", True, local, peer, Frame(codec.encode("0200", fields)))
        answer = {k: v for k, v in fields.items() if k != "14"} | {"39": "00"}
        recorder.frame("terminal", False, local, peer, Frame(codec.encode("0210", answer)))
    await recorder.stop()
    files = sorted(directory.glob("gateway-*.pcapng"))
    assert recorder.counters.files > 3 and len(files) == 3
    for path in files:
        capture = read_capture(path, ISO87)
        # Each file stands alone: the connection starts with a handshake, answers pair up.
        assert capture.connections[0].roles_from == "syn"
        assert capture.transactions and all(t.response for t in capture.transactions[:-1])


def test_the_config_turns_the_recorder_on(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={},
        overrides={"gateway.data_dir": str(tmp_path), "capture.enabled": True},
    )
    service = build_service(config, [])
    components = build_components(config, service, [])
    recorders = [c for c in components if isinstance(c, CaptureRecorder)]
    assert len(recorders) == 1 and service.tap is recorders[0]
    assert recorders[0].directory == tmp_path / "captures"
    off = load_config(None, environ={}, overrides={"gateway.data_dir": str(tmp_path)})
    service = build_service(off, [])
    assert not [c for c in build_components(off, service, []) if isinstance(c, CaptureRecorder)]
    assert service.tap is None
