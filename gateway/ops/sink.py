"""Where the core's news goes: logs, metrics and MQTT.

A sink is called on the transaction path, so every implementation must return at once:
no I/O waits, bounded queues, counted drops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from gateway.core import notices
from gateway.ops.logging import log_event

log = structlog.get_logger("gateway.events")

# Published by the service itself (the core does not see sockets).
ACQUIRER_LINK_UP = "acquirer_link_up"
ACQUIRER_LINK_DOWN = "acquirer_link_down"


class EventSink(Protocol):
    def notify(self, kind: str, data: Mapping[str, Any]) -> None: ...


# What an operator must look at; every other notice is logged at info.
_WARNING_KINDS = frozenset(
    {
        notices.LATE_RESPONSE,
        notices.UNMATCHED_RESPONSE,
        notices.UNDELIVERABLE_RESPONSE,
        notices.REQUEST_REJECTED,
        ACQUIRER_LINK_DOWN,
    }
)
_ERROR_KINDS = frozenset({notices.REVERSAL_FAILED})


class LogSink:
    """One structured line per notice, named after its kind.

    That gives one canonical line per transaction (``transaction_completed``: MTI, masked
    PAN, terminal id, STAN, RRN, outcome, response code, the latencies the service adds,
    reversal id if one is owed) and one per reversal attempt (``reversal_sent`` with its
    attempt number, then ``reversal_acknowledged`` or ``reversal_failed``). Masking is the
    logging pipeline's job (``log_event`` masks like the processor chain), so nothing is
    copied or scanned here.
    """

    def notify(self, kind: str, data: Mapping[str, Any]) -> None:
        log_event(_level(kind), kind, data)


def _level(kind: str) -> int:
    if kind in _ERROR_KINDS:
        return logging.ERROR
    if kind in _WARNING_KINDS:
        return logging.WARNING
    return logging.INFO


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
                log.exception("event_sink_failed", sink=type(sink).__name__, kind=kind)
