"""When the next reversal attempt may go: retry back-off and the drain pace after a link is up."""

from __future__ import annotations

from collections.abc import Sequence


def retry_delay(delays: Sequence[float], failed_attempts: int) -> float:
    """Pause after the n-th failed attempt (n >= 1): delays[n-1], the last one repeating."""
    if failed_attempts < 1:
        return 0.0
    return delays[min(failed_attempts, len(delays)) - 1]


class DrainPacer:
    """Spreads sends so that at most ``rate`` leave per second, each at its own slot."""

    __slots__ = ("_interval", "_next_slot")

    def __init__(self, rate: float, now: float) -> None:
        self._interval = 1.0 / rate
        self._next_slot = now

    def next_slot(self, now: float) -> float:
        """The send time of the next message: now, or after the previous one's slot."""
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._interval
        return slot
