"""End-to-end harness: the acquirer simulator and the gateway service on 127.0.0.1, real sockets.

The gateway runs in the test's event loop (so tests can look inside), with its own SQLite
journal in tmp_path and short timeouts; terminals are `TerminalClient`s or a `TerminalFleet`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config
from gateway.journal.sqlite import SqliteJournal
from gateway.service import GatewayService
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.ledger import Hold
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalClient
from gateway.wire.dialect import get_dialect

# A test card: passes Luhn, never a real one. Tests grep captured output for it.
PAN = "4761739001010119"
TRACK2 = f"{PAN}=25122011234567890"
PIN_BLOCK = "A1B2C3D4E5F60718"

FAST = {
    "acquirer.timeout": 0.4,
    "acquirer.echo_interval": 0,
    "acquirer.reconnect_min": 0.05,
    "acquirer.reconnect_max": 0.2,
    "reversal.timeout": 0.3,
    "reversal.retry_delays": [0.1, 0.2],
    "reversal.drain_rate": 200.0,
    "gateway.shutdown_grace": 0.5,
}


def now_fields() -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "7": now.strftime("%m%d%H%M%S"),
        "12": now.strftime("%H%M%S"),
        "13": now.strftime("%m%d"),
    }


def auth(
    stan: int, amount: int = 1000, *, terminal: str = "TERM0001", track2: bool = False
) -> dict[str, str]:
    """An iso87-binary 0100/0200 as a terminal sends it."""
    fields = {
        "3": "000000",
        "4": f"{amount:012d}",
        "11": f"{stan:06d}",
        "14": "2512",
        "22": "051",
        "25": "00",
        "37": f"{stan:012d}",
        "41": terminal,
        "42": "MERCHANT0000001",
        "49": "978",
        **now_fields(),
    }
    if track2:
        fields["35"] = TRACK2
        fields["52"] = PIN_BLOCK
    else:
        fields["2"] = PAN
    return fields


@dataclass
class Stack:
    simulator: AcquirerSimulator
    service: GatewayService
    journal_path: Path
    config: GatewayConfig
    clients: list[TerminalClient]

    @property
    def port(self) -> int:
        return self.service.terminals.port

    async def terminal(self, **options: Any) -> TerminalClient:
        client = await TerminalClient.connect(
            "127.0.0.1", self.port, self.service.dialect, **options
        )
        self.clients.append(client)
        return client

    def holds(self) -> list[Hold]:
        return self.simulator.ledger.holds

    def requests_seen(self, mti: str) -> int:
        return self.simulator.counters.requests.get(mti, 0)

    async def settle(
        self, condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def links_up(self, timeout: float = 15.0) -> None:
        await self.settle(lambda: self.service.status()["links_up"] > 0, timeout, "a link up")

    async def no_reversals_open(self, timeout: float = 15.0) -> None:
        await self.settle(
            lambda: (
                self.service.status().get("reversals_owed", 0) == 0
                and self.service.status().get("reversals_sent", 0) == 0
            ),
            timeout,
            "every reversal to settle",
        )

    async def acknowledged(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until the gateway has seen `count` reversals acknowledged."""
        await self.settle(
            lambda: events(self).kinds().count("reversal_acknowledged") >= count,
            timeout,
            f"{count} reversal(s) acknowledged",
        )

    async def restart_gateway(self, **overrides: Any) -> None:
        await self.service.shutdown()
        self.service = build_service(self.config, self.journal_path)
        await self.service.start()


def build_service(config: GatewayConfig, journal_path: Path) -> GatewayService:
    dialect = get_dialect(config.gateway.dialect)
    journal = SqliteJournal(journal_path, terminal_index=config.acquirer.stan_mode == "rewrite")
    sink = RecordingSink()
    return GatewayService(config, dialect, journal, sink)


class RecordingSink:
    """Keeps every event the core published, for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(data)))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def events(stack: Stack) -> RecordingSink:
    sink = stack.service.sink
    assert isinstance(sink, RecordingSink)
    return sink


async def start_stack(
    tmp_path: Path,
    *,
    dialect: str = "iso87-binary",
    rules: Iterable[Rule] = (),
    faults: FaultRates | None = None,
    simulator_paused: bool = False,
    simulator_tls: ssl.SSLContext | None = None,
    **overrides: Any,
) -> Stack:
    simulator = AcquirerSimulator(
        dialect, rules=list(rules), faults=faults, seed=1, tls=simulator_tls
    )
    await simulator.start("127.0.0.1", 0)
    if simulator_paused:
        await simulator.pause()
    settings = {
        **FAST,
        "gateway.listen": "127.0.0.1:0",
        "gateway.dialect": dialect,
        "acquirer.addresses": [f"127.0.0.1:{simulator.port}"],
        **{key.replace("__", "."): value for key, value in overrides.items()},
    }
    config = load_config(None, environ={}, overrides=settings)
    journal_path = tmp_path / "journal.sqlite3"
    service = build_service(config, journal_path)
    await service.start()
    return Stack(simulator, service, journal_path, config, [])


async def stop_stack(stack: Stack) -> None:
    for client in stack.clients:
        await client.close()
    await stack.service.shutdown()
    await stack.simulator.stop()


StackFactory = Callable[..., Awaitable[Stack]]
