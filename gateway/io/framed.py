"""An asyncio Protocol that speaks frames instead of bytes.

Used by every TCP peer in the project: the terminal listener, the acquirer links and the
simulators. Protocols rather than streams: one callback per chunk, no task per read, which is
what the gateway's hot path needs.

Writes are coalesced per event loop iteration: the frames written to one connection while the
loop handles a burst (a commit releasing fifty requests, a read bringing ten answers for one
terminal) leave in one system call at the end of the iteration, not one each.

A write is "sent" (``on_sent(True)``) only once the kernel has taken all of its bytes: what
stays in the transport's own buffer (a peer that does not read) is reported when that buffer
drains, and as not sent if the connection is lost first. The transport's high-water mark is 0
so that asyncio says so (``pause_writing`` / ``resume_writing``) for every write the socket did
not take whole; subclasses hear it as ``on_write_blocked`` / ``on_write_unblocked``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from gateway.io.tap import Address, addresses
from gateway.wire.framing import Frame, FrameDecoder, Framing, FramingError, encode_frame


class FramedProtocol(asyncio.Protocol):
    """Splits the byte stream into frames; subclasses override the ``on_*`` hooks.

    A framing error ends that one connection (after ``on_framing_error``): once a length header
    is wrong nothing after it can be trusted, and no other connection is affected.
    """

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self._decoder = FrameDecoder(framing)
        self.transport: asyncio.Transport | None = None
        self.peer: str = "?"
        self.local_address: Address = ("?", 0)
        self.peer_address: Address = ("?", 0)
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._outgoing: list[bytes] = []  # written this loop iteration, sent at its end
        self._on_sent: list[Callable[[bool], None]] = []  # told whether those left
        self._draining: list[Callable[[bool], None]] = []  # their bytes wait in the transport
        self.write_blocked = False  # the transport holds bytes the socket has not taken
        self._connecting = False  # inside connection_made (see pause_writing)

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self._connecting = True
        try:
            _report_every_unsent_byte(self.transport)
        finally:
            self._connecting = False
        self.local_address, self.peer_address = addresses(transport)
        self.peer = f"{self.peer_address[0]}:{self.peer_address[1]}"
        self.on_connected()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except FramingError as error:
            self.on_framing_error(error)
            self.abort()
            return
        for frame in frames:
            if self.transport is None or self.transport.is_closing():
                return
            self.on_frame(frame)
        # Good frames before a bad spot are handled first; then the connection ends at once.
        pending = self._decoder.pending_error
        if pending is not None:
            self.on_framing_error(pending)
            self.abort()

    def eof_received(self) -> bool | None:
        try:
            self._decoder.close()
        except FramingError as error:
            self.on_framing_error(error)
        return None  # close the transport

    def pause_writing(self) -> None:
        if self._connecting:
            # A TLS server's transport still holds the last bytes of its own handshake
            # (session tickets) when it hands the connection over; it sends them once it reads
            # again, and then says resume_writing. Not a peer that does not read: a terminal
            # connection would stop reading, and those bytes would never leave.
            return
        self.write_blocked = True
        self.on_write_blocked()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._report_drained(True)
        self.on_write_unblocked()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        # None: the transport flushed its buffer before closing (asyncio and uvloop close that
        # way; an abort() of ours already reported its writes). An error: those bytes are lost.
        self._report_drained(exc is None)
        if self._on_sent:
            self._report_sent(False)
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_disconnected(exc)

    # API for subclasses and owners ------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write_frame(self, frame: Frame, on_sent: Callable[[bool], None] | None = None) -> bool:
        """Write one frame; False when the connection is already gone (nothing was written).

        The bytes go to the transport at the end of this loop iteration, with every other
        frame written to this connection meanwhile; ``close()`` sends them first. ``on_sent``
        learns then whether they did: False when the connection closed first (a terminal
        hanging up while its approval waited for the end of the iteration).
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        if not self._outgoing:
            self._loop.call_soon(self._send_outgoing)
        self._outgoing.append(encode_frame(self.framing, frame))
        if on_sent is not None:
            self._on_sent.append(on_sent)
        return True

    def flush(self) -> None:
        """Send what was written now, not at the end of the loop iteration: for a caller that
        has just written a whole batch (what one journal commit released)."""
        if self._outgoing:
            self._send_outgoing()

    def _send_outgoing(self) -> None:
        chunks, self._outgoing = self._outgoing, []
        transport = self.transport
        sent = bool(chunks) and transport is not None and not transport.is_closing()
        if sent:
            assert transport is not None
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if not self._on_sent:
            return
        if sent and self.write_blocked:  # not all of it reached the kernel: wait for the drain
            self._draining.extend(self._on_sent)
            self._on_sent = []
        else:
            self._report_sent(sent)

    def _report_sent(self, sent: bool) -> None:
        callbacks, self._on_sent = self._on_sent, []
        for callback in callbacks:
            callback(sent)

    def _report_drained(self, sent: bool) -> None:
        callbacks, self._draining = self._draining, []
        for callback in callbacks:
            callback(sent)

    def close(self) -> None:
        """Close after sending what was written."""
        self._send_outgoing()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once, and what was written to it with it."""
        self._outgoing = []
        if self.transport is not None:
            self.transport.abort()
        self._report_drained(False)
        if self._on_sent:
            self._report_sent(False)

    # hooks --------------------------------------------------------------------------------

    def on_connected(self) -> None:
        """The connection is up."""

    def on_frame(self, frame: Frame) -> None:
        """A whole frame arrived (keep-alives included: check ``frame.is_keepalive``)."""

    def on_framing_error(self, error: FramingError) -> None:
        """The peer sent bytes that are not frames; the connection is aborted after this."""

    def on_disconnected(self, exc: Exception | None) -> None:
        """The connection is gone."""

    def on_write_blocked(self) -> None:
        """The peer stopped taking bytes: they wait in the transport's buffer."""

    def on_write_unblocked(self) -> None:
        """The transport's buffer has drained."""


ProtocolFactory = Callable[[], FramedProtocol]


def _report_every_unsent_byte(transport: asyncio.Transport) -> None:
    """Write-buffer limits under which asyncio pauses the protocol for any byte the kernel has
    not taken (see the module docstring): a plain transport pauses above ``high``, so 0; a TLS
    transport at ``high`` or more, so 1. (A TLS layer also hands its bytes on to a TCP transport
    with a buffer of its own: the terminal listener's counts that one too, ``_TerminalTls`` in
    gateway/io/terminals.py.)"""
    tls = transport.get_extra_info("ssl_object") is not None
    transport.set_write_buffer_limits(high=1 if tls else 0)
