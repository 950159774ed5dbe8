"""A gateway with its /metrics endpoint, and the acquirer simulator, on 127.0.0.1 in-process.

Built the way `iso-gateway serve` builds it (gateway.app.build_service / build_components with
metrics.listen set), so the tests scrape exactly what an operator's Prometheus would. Helpers
to scrape over real HTTP and to read samples from the text format.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Component, build_components, build_service
from gateway.config import GatewayConfig, load_config
from gateway.ops.metrics import MetricsEndpoint
from gateway.service import GatewayService
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import Rule
from gateway.sim.terminals import TerminalClient
from tests.e2e.harness import FAST, RecordingSink


@dataclass
class Metered:
    simulator: AcquirerSimulator
    service: GatewayService
    endpoint: MetricsEndpoint
    components: list[Component]
    recorder: RecordingSink
    config: GatewayConfig
    clients: list[TerminalClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.endpoint.port}/metrics"

    async def terminal(self) -> TerminalClient:
        client = await TerminalClient.connect(
            "127.0.0.1", self.service.terminals.port, self.service.dialect
        )
        self.clients.append(client)
        return client

    async def scrape(self, accept: str | None = None) -> str:
        """GET /metrics over real HTTP (from a thread: the server runs on this loop)."""
        return (await asyncio.to_thread(get, self.url, accept))[0]

    async def samples(self) -> Samples:
        return parse(await self.scrape())

    async def settle(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def links_up(self) -> None:
        await self.settle(lambda: self.service.status()["links_up"] > 0, "a link up")

    async def seen(self, kind: str, count: int = 1) -> None:
        await self.settle(lambda: self.recorder.kinds().count(kind) >= count, f"{count} {kind}")

    async def stop(self) -> None:
        for client in self.clients:
            await client.close()
        await self.service.shutdown()
        for component in reversed(self.components):
            await component.stop()
        await self.simulator.stop()


def get(url: str, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode("utf-8"), response.headers["Content-Type"]


async def start_metered(tmp_path: Path, *, rules: Iterable[Rule] = (), **overrides: Any) -> Metered:
    simulator = AcquirerSimulator("iso87-binary", rules=list(rules), seed=1)
    await simulator.start("127.0.0.1", 0)
    settings = {
        **FAST,
        "gateway.listen": "127.0.0.1:0",
        "acquirer.addresses": [f"127.0.0.1:{simulator.port}"],
        "journal.path": tmp_path / "journal.sqlite3",
        "metrics.listen": "127.0.0.1:0",
        **overrides,
    }
    config = load_config(None, environ={}, overrides=settings)
    recorder = RecordingSink()
    sinks: list[Any] = [recorder]
    service = build_service(config, sinks)
    components = build_components(config, service, sinks)
    endpoint = next(c for c in components if isinstance(c, MetricsEndpoint))
    for component in components:
        await component.start()
    await service.start()
    return Metered(simulator, service, endpoint, components, recorder, config)


# reading the exposition ---------------------------------------------------------------------

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` carrying ``labels`` (0 when none)."""
    return sum(
        v
        for sample_labels, v in samples.get(name, ())
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )
