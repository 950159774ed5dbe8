"""The terminal side: a TCP listener and one framed connection per terminal.

Connections only carry bytes. What a terminal's requests are owed belongs to the service and the
core, never to the connection: a terminal hanging up cancels nothing.

A connection that stops being a good peer is cut, so that it holds neither memory nor a slot
of ``max_connections``: a terminal that takes none of the gateway's bytes for
``write_timeout`` (meanwhile nothing more is read from it: its own requests wait in TCP), one
that leaves a frame half sent for ``frame_timeout``, and, when ``idle_timeout`` is set, one
that sends nothing that long. TCP keepalive finds the peers that vanished without a word.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import functools
import itertools
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import structlog

from gateway.io.framed import FramedProtocol
from gateway.wire.framing import Frame, Framing, FramingError

log = structlog.get_logger("gateway.terminals")

# TCP keepalive on terminal connections (Linux option names; elsewhere the OS defaults).
_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 5}
# How often the server looks for connections to cut, and how often a refusal is logged.
_SWEEP_SECONDS = 1.0
_FLOOD_LOG_SECONDS = 10.0
# At close: how long terminals get to take what was written to them.
_CLOSE_DRAIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 10_000
    write_timeout: float = 30.0  # a terminal taking none of our bytes this long is cut off
    frame_timeout: float = 30.0  # a frame left half sent this long
    tls_handshake_timeout: float = 10.0  # a TLS peer that has not finished its handshake
    idle_timeout: float = 0.0  # nothing received this long; 0 = never


class TerminalListener(Protocol):
    def on_terminal_connected(self, conn: TerminalConnection) -> None: ...
    def on_terminal_frame(self, conn: TerminalConnection, frame: Frame) -> None: ...
    def on_terminal_framing_error(self, conn: TerminalConnection, error: FramingError) -> None: ...
    def on_terminal_closed(self, conn: TerminalConnection) -> None: ...


class TerminalConnection(FramedProtocol):
    def __init__(self, conn_id: int, framing: Framing, listener: TerminalListener) -> None:
        super().__init__(framing)
        self.conn_id = conn_id
        self._listener = listener
        self.last_read = time.monotonic()
        self.blocked_since: float | None = None  # since when the terminal takes no bytes

    def on_connected(self) -> None:
        self._listener.on_terminal_connected(self)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        super().data_received(data)

    def on_write_blocked(self) -> None:
        # Read no more from a terminal that does not read: its requests wait in TCP instead
        # of its answers piling up here.
        self.blocked_since = time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def on_write_unblocked(self) -> None:
        self.blocked_since = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def partial_frame(self) -> bool:
        """Part of a frame has arrived, not all of it."""
        return self._decoder.buffered > 0

    def on_frame(self, frame: Frame) -> None:
        self._listener.on_terminal_frame(self, frame)

    def on_framing_error(self, error: FramingError) -> None:
        self._listener.on_terminal_framing_error(self, error)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._listener.on_terminal_closed(self)


class TerminalServer:
    """Accepts terminals; refuses connections beyond ``max_connections``; cuts bad peers."""

    def __init__(
        self, framing: Framing, listener: TerminalListener, limits: ConnectionLimits
    ) -> None:
        self._framing = framing
        self._listener = listener
        self.limits = limits
        self._ids = itertools.count(1)
        self.connections: dict[int, TerminalConnection] = {}
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._refusals = _CountedWarning("terminal_connections_refused")
        self._handshaking: set[_TerminalTls] = set()  # TLS peers not yet connections
        self._tls_failures = _CountedWarning("terminal_tls_handshakes_failed")
        self.cut: Counter[str] = Counter()  # connections cut, by reason

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen; with ``tls``, terminals speak TLS only. A terminal whose handshake fails (or
        does not finish within ``tls_handshake_timeout``) never becomes a connection; one
        still in its handshake counts against ``max_connections``."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = self._make_connection
        if tls is not None:
            handshake_timeout = self.limits.tls_handshake_timeout

            def factory() -> asyncio.BaseProtocol:
                if len(self.connections) + len(self._handshaking) >= self.limits.max_connections:
                    return _RefusedAtOnce(self)
                # asyncio's own TLS layer over the loop's TCP transport, on uvloop too (not
                # loop.create_server(ssl=...)): uvloop's TLS layer hides its TCP transport, and
                # an approval written there would count as delivered before the kernel has it
                # (gateway/io/framed.py).
                handshake = loop.create_future()
                layer = _TerminalTls(
                    loop,
                    self._make_connection(),
                    tls,
                    handshake,
                    server_side=True,
                    ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]  # a float
                )
                self._handshaking.add(layer)
                handshake.add_done_callback(functools.partial(self._handshake_done, layer))
                return layer

        self._server = await loop.create_server(factory, host, port, backlog=1024)
        self._sweeper = loop.call_later(_SWEEP_SECONDS, self._sweep)

    def _make_connection(self) -> TerminalConnection:
        conn = _TrackedConnection(next(self._ids), self._framing, self._listener, self)
        return conn

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, drain: float = _CLOSE_DRAIN_SECONDS) -> None:
        """Close every connection after sending what was written to it; a terminal that
        does not take it within ``drain`` seconds is cut (what it was owed is then reported
        not delivered)."""
        self.stop_accepting()
        for conn in list(self.connections.values()):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        deadline = time.monotonic() + drain
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            conn.abort()
        for layer in list(self._handshaking):  # not terminals yet: nothing owed to them
            layer.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def _sweep(self) -> None:
        """Cut the connections that stopped being good peers (see the module docstring)."""
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)
        now = time.monotonic()
        limits = self.limits
        for conn in list(self.connections.values()):
            silent = now - conn.last_read
            if conn.blocked_since is not None and now - conn.blocked_since > limits.write_timeout:
                reason = "write_timeout"  # what waits for it is not delivered: reversed
            elif conn.partial_frame and silent > limits.frame_timeout:
                reason = "frame_timeout"
            elif limits.idle_timeout and silent > limits.idle_timeout:
                reason = "idle_timeout"
            else:
                continue
            self.cut[reason] += 1
            log.warning("terminal_connection_cut", conn=conn.conn_id, peer=conn.peer, reason=reason)
            conn.abort()

    def _handshake_done(self, layer: _TerminalTls, handshake: asyncio.Future[None]) -> None:
        """A peer that fails the TLS handshake (plain TCP, an unknown CA, no certificate under
        mutual TLS, too slow) never becomes a connection: counted, and said now and then."""
        self._handshaking.discard(layer)
        error = None if handshake.cancelled() else handshake.exception()
        if error is not None:
            self._tls_failures.add(last_error=str(error) or type(error).__name__)

    def _refuse(self, conn: TerminalConnection | asyncio.Transport) -> None:
        self._refusals.add(max_connections=self.limits.max_connections)
        conn.abort()

    @property
    def refused(self) -> int:
        """Connections refused at max_connections."""
        return self._refusals.total

    @property
    def tls_handshakes_failed(self) -> int:
        """Peers that failed the TLS handshake, and so never became a connection."""
        return self._tls_failures.total


class _CountedWarning:
    """A warning for something that may come in floods (a port scan, a reconnect storm): said
    at most every ``_FLOOD_LOG_SECONDS``, with how many happened since it was last said."""

    def __init__(self, event: str) -> None:
        self.event = event
        self.total = 0
        self._unlogged = 0
        self._logged_at = 0.0

    def add(self, **context: object) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= _FLOOD_LOG_SECONDS:
            log.warning(self.event, count=self._unlogged, **context)
            self._logged_at = now
            self._unlogged = 0


class _RefusedAtOnce(asyncio.Protocol):
    """A TLS peer over ``max_connections``: dropped before its handshake costs anything."""

    def __init__(self, server: TerminalServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server._refuse(cast(asyncio.Transport, transport))


class _TerminalTls(asyncio.sslproto.SSLProtocol):
    """asyncio's TLS layer, counting the bytes its TCP transport still holds as unsent.

    asyncio pauses and resumes the terminal's protocol by the bytes waiting in the TLS layer
    only; once they are passed on to the TCP transport they count as gone, though that
    transport may hold them because the terminal reads nothing. An approval would then count
    as delivered and never be reversed. Counting the TCP transport's buffer too, the protocol
    is resumed only when the kernel has taken everything (the TCP transport tells this layer
    when it drains, and this layer then looks again). ``_get_write_buffer_size`` is asyncio's
    own (3.11 and later); tests/e2e/tls checks the behaviour on asyncio and on uvloop.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any byte left in the TCP transport pauses this layer's writing, so that it hears
        # (resume_writing) when the kernel has taken the last one, and looks again.
        cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=0)
        super().connection_made(transport)

    def abort(self) -> None:
        """Drop the TCP connection under this layer (a peer still in its handshake)."""
        tcp = cast(asyncio.Transport | None, self._transport)
        if tcp is not None:
            tcp.abort()

    def _get_write_buffer_size(self) -> int:
        size: int = super()._get_write_buffer_size()  # type: ignore[misc]  # not in typeshed
        inner = cast(asyncio.WriteTransport | None, self._transport)  # the TCP transport
        return size + (inner.get_write_buffer_size() if inner is not None else 0)

    def eof_received(self) -> None:  # typeshed's signature; asyncio's returns a bool
        """The terminal sent a bare FIN (a half-close, or its TLS stack died) with no TLS
        close_notify. asyncio's TLS layer then drops every later write without a word while its
        transport still says it is open, so an approval written meanwhile would count as
        delivered. As over plain TCP, the connection is gone for writing from now on: later
        approvals are refused (and reversed), and reading resumes so that the layer finishes
        closing instead of waiting for a drain that cannot come."""
        app_transport = self._app_transport
        if app_transport is not None:
            app_transport._closed = True  # is_closing() from now on
        self._app_reading_paused = False
        return super().eof_received()


class _TrackedConnection(TerminalConnection):
    def __init__(
        self, conn_id: int, framing: Framing, listener: TerminalListener, server: TerminalServer
    ) -> None:
        super().__init__(conn_id, framing, listener)
        self._server = server

    def on_connected(self) -> None:
        if len(self._server.connections) >= self._server.limits.max_connections:
            # Over the limit: refuse this terminal without touching the others.
            self._server._refuse(self)
            return
        _keep_alive(self.transport)
        self._server.connections[self.conn_id] = self
        super().on_connected()

    def on_disconnected(self, exc: Exception | None) -> None:
        if self._server.connections.pop(self.conn_id, None) is not None:
            super().on_disconnected(exc)


def _keep_alive(transport: asyncio.BaseTransport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE.items():
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
