"""FramedProtocol's writes: one transport write per connection per loop iteration."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any, cast

import uvloop

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

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


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


# Real sockets: a peer that does not read --------------------------------------------------


async def _blocked_writes(close_peer: bool) -> tuple[list[bool], list[bool], int]:
    """Write to a peer that reads nothing until the kernel's buffers are full; return the
    reports while blocked, the reports after the peer read (or reset), and the bytes left in
    the transport's buffer when writing blocked."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[FramedProtocol] = loop.create_future()

    def make() -> FramedProtocol:
        protocol = FramedProtocol(FRAMING)
        loop.call_soon(accepted.set_result, protocol)
        return protocol

    server = await loop.create_server(make, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(("127.0.0.1", port))
    peer.setblocking(False)
    protocol = await accepted
    assert protocol.transport is not None
    protocol.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    reports: list[bool] = []
    chunk = Frame(b"0210" + b"x" * 1000)
    for _ in range(2000):
        protocol.write_frame(chunk, on_sent=reports.append)
        await asyncio.sleep(0)
        if protocol.write_blocked:
            break
    assert protocol.write_blocked, "the kernel took 2 MB from a peer that reads nothing"
    buffered = protocol.transport.get_write_buffer_size()
    while_blocked = list(reports)
    reports.clear()
    if close_peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset: what waits in the gateway's buffer never leaves
        await asyncio.wait_for(protocol.closed, 5)
    else:
        while protocol.write_blocked:  # the peer reads: the buffer drains
            with contextlib.suppress(BlockingIOError):
                while peer.recv(65536):
                    pass
            await asyncio.sleep(0.01)
        peer.close()
    server.close()
    return while_blocked, reports, buffered


def _on_each_loop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(scenario())


def test_a_write_the_kernel_did_not_take_is_reported_once_it_drains() -> None:
    async def scenario() -> None:
        while_blocked, after, buffered = await _blocked_writes(close_peer=False)
        assert buffered > 0
        assert while_blocked and all(while_blocked)
        # The last write did not reach the kernel whole: not reported until it drained.
        assert after == [True]

    _on_each_loop(scenario)


def test_a_write_lost_in_the_transports_buffer_is_reported_unsent() -> None:
    async def scenario() -> None:
        _, after, _ = await _blocked_writes(close_peer=True)
        assert after == [False]

    _on_each_loop(scenario)
