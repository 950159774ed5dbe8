"""FramedProtocol's writes: one transport write per connection per loop iteration."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.io.framed import FramedProtocol
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame, FrameDecoder

FRAMING = get_dialect("iso87-binary").framing


class FakeTransport:
    """What FramedProtocol uses of a transport, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8583) if name in ("sockname", "peername") else default


def connected() -> tuple[FramedProtocol, FakeTransport]:
    protocol = FramedProtocol(FRAMING)
    transport = FakeTransport()
    protocol.connection_made(cast(asyncio.Transport, transport))
    return protocol, transport


def frames_in(writes: list[bytes]) -> list[bytes]:
    decoder = FrameDecoder(FRAMING)
    return [frame.message for frame in decoder.feed(b"".join(writes))]


async def test_frames_written_in_one_iteration_leave_in_one_write() -> None:
    protocol, transport = connected()
    for n in range(3):
        assert protocol.write_frame(Frame(b"0210" + bytes([n])))
    assert transport.writes == []  # nothing yet: the iteration is still running
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    assert frames_in(transport.writes) == [b"0210\x00", b"0210\x01", b"0210\x02"]
    protocol.write_frame(Frame(b"0210\x03"))
    await asyncio.sleep(0)
    assert len(transport.writes) == 2  # a later iteration: a write of its own


async def test_flush_sends_at_once() -> None:
    protocol, transport = connected()
    protocol.write_frame(Frame(b"0200\x01"))
    protocol.write_frame(Frame(b"0200\x02"))
    protocol.flush()
    assert frames_in(transport.writes) == [b"0200\x01", b"0200\x02"]
    await asyncio.sleep(0)
    assert len(transport.writes) == 1  # the scheduled send finds nothing left


async def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    protocol, transport = connected()
    protocol.write_frame(Frame(b"0210\x01"))
    protocol.close()
    assert frames_in(transport.writes) == [b"0210\x01"] and transport.closed
    assert not protocol.write_frame(Frame(b"0210\x02"))  # closing: refused, not queued

    protocol, transport = connected()
    protocol.write_frame(Frame(b"0210\x01"))
    protocol.abort()
    await asyncio.sleep(0)
    assert transport.writes == [] and transport.aborted


async def test_on_sent_says_whether_the_bytes_left() -> None:
    protocol, transport = connected()
    told: list[tuple[str, bool]] = []
    protocol.write_frame(Frame(b"0210\x01"), on_sent=lambda ok: told.append(("a", ok)))
    protocol.write_frame(Frame(b"0210\x02"), on_sent=lambda ok: told.append(("b", ok)))
    assert told == []  # not before the bytes are handed to the transport
    await asyncio.sleep(0)
    assert told == [("a", True), ("b", True)] and len(transport.writes) == 1


async def test_a_connection_closing_before_the_iteration_ends_reports_unsent() -> None:
    # The terminal hangs up in the same loop iteration its approval was written in: the
    # approval never leaves, and whoever waits for it must hear so (the core then reverses).
    protocol, transport = connected()
    told: list[bool] = []
    assert protocol.write_frame(Frame(b"0210\x01"), on_sent=told.append)
    transport.close()  # the peer's EOF, handled later in the same iteration
    await asyncio.sleep(0)
    assert told == [False] and transport.writes == []

    protocol, transport = connected()
    protocol.write_frame(Frame(b"0210\x01"), on_sent=told.append)
    protocol.abort()
    assert told == [False, False]
