"""The ledger while the simulator runs: the HTTP/JSON endpoint and the JSON file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.terminals import TerminalClient
from gateway.wire.dialect import Dialect

PAN = "4761739001010010"
SALE = {
    "2": PAN,
    "3": "000000",
    "4": "000000001500",
    "7": "1125103000",
    "11": "000101",
    "41": "TERM0001",
    "42": "MERCHANT0000001",
    "49": "840",
}


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, body


async def test_the_http_endpoint_serves_the_ledger(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87)
    await sim.start("127.0.0.1", 0, ledger_http=("127.0.0.1", 0))
    try:
        assert sim.http_port
        async with await TerminalClient.connect(sim.host, sim.port, iso87) as client:
            await client.send("0200", SALE)

        status, body = await http_get(sim.http_port, "/ledger")
        assert status == 200
        assert PAN.encode() not in body
        ledger = json.loads(body)
        assert ledger["summary"]["holds_open"] == 1
        assert ledger["summary"]["held_amount"] == 1500
        (entry,) = ledger["entries"]
        assert entry["pan"] == "476173******0010"
        assert (entry["terminal_id"], entry["stan"], entry["released"]) == (
            "TERM0001",
            "000101",
            False,
        )
        assert ledger["counters"]["requests"] == {"0200": 1}

        status, body = await http_get(sim.http_port, "/ledger/summary")
        assert status == 200
        assert "entries" not in json.loads(body)
        assert (await http_get(sim.http_port, "/nothing"))[0] == 404
        assert (await http_get(sim.http_port, "/ledger", method="POST"))[0] == 405
    finally:
        await sim.stop()


async def test_the_ledger_file_follows_changes(iso87: Dialect, tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    sim = AcquirerSimulator(iso87, ledger_file=path, ledger_file_debounce=0.05)
    await sim.start()
    try:
        assert json.loads(path.read_text())["summary"]["approved"] == 0  # written at start
        async with await TerminalClient.connect(sim.host, sim.port, iso87) as client:
            await client.send("0200", SALE)
        for _ in range(200):  # wait (bounded) for the debounced rewrite
            if json.loads(path.read_text())["summary"]["approved"] == 1:
                break
            await asyncio.sleep(0.05)
        assert json.loads(path.read_text())["summary"]["approved"] == 1
    finally:
        await sim.stop()
    final = path.read_text()
    assert PAN not in final
    assert json.loads(final)["entries"][0]["pan"] == "476173******0010"
    assert not (tmp_path / "ledger.json.tmp").exists()
