"""Making the simulator's ledger readable while it runs: a tiny HTTP/JSON endpoint and a file.

Both serve the same snapshot (summary, counters, entries with masked PANs). The HTTP server is
plain asyncio (one request per connection, ``Connection: close``): enough for curl, a test or a
demo script, and no web framework to install.

Routes: ``GET /ledger`` (summary + counters + entries), ``GET /ledger/summary`` (without the
entries), ``GET /health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Snapshot = Callable[[bool], dict[str, Any]]  # entries wanted? -> JSON-ready dict

_MAX_REQUEST_LINE = 2048
_READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class LedgerHttpServer:
    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._respond(reader)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
        # Headers are read and ignored: the routes take no parameters.
        while True:
            header = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT)
            if header in (b"\r\n", b"\n", b""):
                break
        parts = line.decode("latin-1").split()
        if len(line) > _MAX_REQUEST_LINE or len(parts) != 3:
            return 400, _json({"error": "malformed request line"})
        method, target = parts[0], parts[1].split("?", 1)[0].rstrip("/") or "/"
        if method != "GET":
            return 405, _json({"error": f"{method} not allowed; use GET"})
        if target == "/ledger":
            return 200, _json(self._snapshot(True))
        if target == "/ledger/summary":
            return 200, _json(self._snapshot(False))
        if target == "/health":
            return 200, _json({"ok": True})
        return 404, _json({"error": "not found", "routes": ["/ledger", "/ledger/summary"]})


class LedgerFileWriter:
    """Rewrites a JSON file after changes, at most once per ``debounce`` seconds (atomically:
    a reader never sees half a file)."""

    def __init__(self, path: Path, snapshot: Snapshot, debounce: float = 0.5) -> None:
        self.path = path
        self._snapshot = snapshot
        self._debounce = debounce
        self._pending: asyncio.TimerHandle | None = None

    def notify(self) -> None:
        """Something changed: write soon (one write for a burst of changes)."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self._debounce, self.write_now)

    def write_now(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(_json(self._snapshot(True)))
        os.replace(temporary, self.path)

    def close(self) -> None:
        """Write the final state and stop."""
        self.write_now()


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1, sort_keys=False).encode("utf-8") + b"\n"
