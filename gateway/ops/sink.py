"""Where the core's news goes: logs now, metrics and MQTT alongside (issue: operations).

A sink is called on the transaction path, so every implementation must return at once:
no I/O waits, bounded queues, counted drops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from gateway.wire.masking import redact_text

log = structlog.get_logger("gateway.events")


class EventSink(Protocol):
    def notify(self, kind: str, data: Mapping[str, Any]) -> None: ...


class LogSink:
    """One structured log line per event. Values are redacted as a last line of defence."""

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        log.info(kind, **{key: _safe(value) for key, value in data.items()})


class FanOut:
    """Send every event to several sinks; one failing sink never stops the others."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        # The list is shared, not copied: components built after the service add their sinks.
        self._sinks = sinks

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        for sink in self._sinks:
            try:
                sink.notify(kind, data)
            except Exception:  # a broken sink must not break the transaction path
                log.exception("event_sink_failed", sink=type(sink).__name__, event=kind)


def _safe(value: Any) -> Any:
    return redact_text(value) if isinstance(value, str) else value
