"""A bare TCP byte relay: the ceiling any proxy in Python can reach on this machine.

Each client connection gets its own upstream connection; bytes are copied both ways with no
framing, no parsing and no journal. `bench/gateway.py` runs it beside the gateway.

    python -m bench.relay LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast


class _Pipe(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def main(listen_port: int, upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def client_side() -> _Pipe:
        client = _Pipe()

        async def connect() -> None:
            _, upstream = await loop.create_connection(_Pipe, upstream_host, upstream_port)
            upstream.peer = client
            client.peer = upstream
            assert upstream.transport is not None
            for chunk in client.pending:
                upstream.transport.write(chunk)
            client.pending.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(client_side, "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    relay = main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    try:
        import uvloop
    except ImportError:
        asyncio.run(relay)
    else:
        uvloop.run(relay)
