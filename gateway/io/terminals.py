"""The terminal side: a TCP listener and one framed connection per terminal.

Connections only carry bytes. What a terminal's requests are owed belongs to the service and the
core, never to the connection: a terminal hanging up cancels nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

from gateway.io.framed import FramedProtocol
from gateway.wire.framing import Frame, Framing, FramingError


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

    def on_connected(self) -> None:
        self._listener.on_terminal_connected(self)

    def on_frame(self, frame: Frame) -> None:
        self._listener.on_terminal_frame(self, frame)

    def on_framing_error(self, error: FramingError) -> None:
        self._listener.on_terminal_framing_error(self, error)

    def on_disconnected(self, exc: Exception | None) -> None:
        self._listener.on_terminal_closed(self)


class TerminalServer:
    """Accepts terminals; refuses connections beyond ``max_connections``."""

    def __init__(self, framing: Framing, listener: TerminalListener, max_connections: int) -> None:
        self._framing = framing
        self._listener = listener
        self._max_connections = max_connections
        self._ids = itertools.count(1)
        self.connections: dict[int, TerminalConnection] = {}
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_connection, host, port, backlog=1024)

    def _make_connection(self) -> TerminalConnection:
        conn = _TrackedConnection(next(self._ids), self._framing, self._listener, self)
        return conn

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections.values()):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()


class _TrackedConnection(TerminalConnection):
    def __init__(
        self, conn_id: int, framing: Framing, listener: TerminalListener, server: TerminalServer
    ) -> None:
        super().__init__(conn_id, framing, listener)
        self._server = server

    def on_connected(self) -> None:
        if len(self._server.connections) >= self._server._max_connections:
            # Over the limit: refuse this terminal without touching the others.
            self.abort()
            return
        self._server.connections[self.conn_id] = self
        super().on_connected()

    def on_disconnected(self, exc: Exception | None) -> None:
        if self._server.connections.pop(self.conn_id, None) is not None:
            super().on_disconnected(exc)
