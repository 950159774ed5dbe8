"""`iso-gateway serve`: build the service from the configuration and run it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog

from gateway.config import GatewayConfig
from gateway.journal.sqlite import SqliteJournal
from gateway.ops.logging import configure_logging
from gateway.ops.sink import LogSink
from gateway.service import GatewayService
from gateway.wire.dialect import get_dialect

log = structlog.get_logger("gateway.app")


def build_service(config: GatewayConfig) -> GatewayService:
    dialect = get_dialect(config.gateway.dialect, config.gateway.specs_dirs)
    journal = SqliteJournal(config.journal_path, durability=config.journal.durability)
    return GatewayService(config, dialect, journal, LogSink())


async def serve(config: GatewayConfig) -> None:
    service = build_service(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
        log.info("shutdown_requested", grace_seconds=config.gateway.shutdown_grace)
    finally:
        await service.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(config: GatewayConfig) -> None:
    configure_logging(config.logging.level, config.logging.format)
    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, slower
        uvloop = None
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(serve(config))
        else:
            asyncio.run(serve(config))
