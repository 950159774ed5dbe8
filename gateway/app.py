"""`iso-gateway serve`: build the service from the configuration and run it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol

import structlog

from gateway.config import GatewayConfig
from gateway.io import runtime
from gateway.io.runtime import tune_gc
from gateway.journal.sqlite import SqliteJournal
from gateway.ops.gc_pauses import PAUSES
from gateway.ops.journal_errors import JournalErrorLog
from gateway.ops.logging import configure_logging, flush_logs
from gateway.ops.metrics import MetricsEndpoint
from gateway.ops.mqtt import MqttPublisher
from gateway.ops.sink import EventSink, FanOut, LogSink
from gateway.replay.recorder import CaptureRecorder
from gateway.service import GatewayService
from gateway.wire.dialect import get_dialect

log = structlog.get_logger("gateway.app")


class Component(Protocol):
    """Something that runs beside the service (metrics endpoint, MQTT publisher, recorder)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def build_service(config: GatewayConfig, sinks: list[EventSink] | None = None) -> GatewayService:
    dialect = get_dialect(config.gateway.dialect, config.gateway.specs_dirs)
    errors = JournalErrorLog()
    journal = SqliteJournal(
        config.journal_path,
        durability=config.journal.durability,
        commit_delay=config.journal.commit_delay,
        on_error=errors.failed,
        # Under STAN rewrite a terminal's late reversal is tied to its sale by terminal and STAN.
        terminal_index=config.acquirer.stan_mode == "rewrite",
    )
    journal.on_commit(errors.committed)
    return GatewayService(config, dialect, journal, FanOut(sinks or [LogSink()]))


def build_components(
    config: GatewayConfig, service: GatewayService, sinks: list[EventSink]
) -> list[Component]:
    """The optional parts the configuration asks for; each may add itself to ``sinks``."""
    components: list[Component] = []
    if config.capture.enabled:
        directory = config.capture.directory or config.gateway.data_dir / "captures"
        recorder = CaptureRecorder(config.capture, directory, service.dialect)
        service.tap = recorder
        components.append(recorder)
    if config.metrics.listen:
        metrics = MetricsEndpoint(
            config.metrics.listen, service, mqtt=lambda: _mqtt_publisher(components)
        )
        sinks.append(metrics.sink)
        if isinstance(service.journal, SqliteJournal):
            service.journal.on_stats = metrics.sink.on_commit_stats
        components.append(metrics)
    if config.mqtt.url:
        publisher = MqttPublisher(config.mqtt)
        sinks.append(publisher)
        components.append(publisher)
    return components


def _mqtt_publisher(components: list[Component]) -> Component | None:
    """The MQTT publisher among the components (it has ``connected`` and ``dropped``), looked
    up at scrape time so the order the components are built in does not matter."""
    for component in components:
        if hasattr(component, "connected") and hasattr(component, "dropped"):
            return component
    return None


async def serve(config: GatewayConfig) -> None:
    sinks: list[EventSink] = [LogSink()]
    service = build_service(config, sinks)
    components = build_components(config, service, sinks)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Component] = []
    try:
        # Inside the try: a start-up that fails halfway (the listen port taken) still stops
        # what did start, links included, and the process exits with the error.
        for component in components:
            await component.start()
            started.append(component)
        await service.start()
        tune_gc()  # after start-up and recovery: what is alive now lives as long as the process
        PAUSES.install()  # iso_gateway_gc_pause_seconds
        await stop.wait()
        log.info("shutdown_requested", grace_seconds=config.gateway.shutdown_grace)
    finally:
        await service.shutdown()
        for component in reversed(started):
            await component.stop()
        flush_logs()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(config: GatewayConfig) -> None:
    configure_logging(config.logging.level, config.logging.format)
    with contextlib.suppress(KeyboardInterrupt):
        runtime.run(serve(config))
