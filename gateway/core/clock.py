"""Time formats of ISO 8583, computed from a time the caller passes in (the core reads no clock)."""

from __future__ import annotations

from datetime import UTC, datetime


def transmission_time(now: float) -> str:
    """DE 7, transmission date and time: MMDDhhmmss in UTC."""
    return datetime.fromtimestamp(now, UTC).strftime("%m%d%H%M%S")
