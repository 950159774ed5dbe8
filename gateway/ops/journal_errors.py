"""Journal commit failures in the log: the first one at once, then a reminder while they last,
and one line when commits succeed again.

The journal retries a failed commit by itself and holds every send behind it, so a failure
costs latency, then declines (terminals time out), never data. What an operator must see is
that it is happening (disk full, file locked, permissions) and that it stopped; a line per
retry (up to several a second) would bury everything else. The counter
``journal_commit_errors_total`` counts every one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("gateway.journal")

REMIND_EVERY_SECONDS = 30.0


class JournalErrorLog:
    """``failed`` is the journal's ``on_error``; ``committed`` one of its commit listeners."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures = 0  # in a row, since the last successful commit
        self._first_at = 0.0
        self._logged_at = 0.0

    def failed(self, error: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        if self._failures == 1:
            self._first_at = now
        elif now - self._logged_at < REMIND_EVERY_SECONDS:
            return
        self._logged_at = now
        log.error(
            "journal_commit_failed",
            error=f"{type(error).__name__}: {error}",
            failures=self._failures,
            failing_seconds=round(now - self._first_at, 3),
            note="retrying; requests wait for the journal and are not sent meanwhile",
        )

    def committed(self, _seq: int) -> None:
        if not self._failures:
            return
        log.warning(
            "journal_commit_recovered",
            failures=self._failures,
            failing_seconds=round(self._clock() - self._first_at, 3),
        )
        self._failures = 0
