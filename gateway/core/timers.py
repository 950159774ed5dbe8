"""The core's timers: one heap of deadlines, each target with at most one live timer.

Re-arming or cancelling never searches the heap: a target remembers the sequence number of
its live timer, and heap entries with another number are stale and skipped when they surface
("lazy deletion").
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    timer_seq: int  # the live timer's sequence number, 0 for none


T = TypeVar("T", bound=Timed)


class TimerHeap(Generic[T]):
    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = 0

    def arm(self, target: T, deadline: float) -> None:
        """(Re)arm the one timer of ``target``; an earlier one becomes stale."""
        self._seq += 1
        target.timer_seq = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, target))

    @staticmethod
    def cancel(target: T) -> None:
        target.timer_seq = 0

    def due(self, now: float) -> Iterator[T]:
        """Targets whose timer is due at or before ``now``, earliest first. A target armed
        again while this runs is yielded again if its new deadline is due too."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, target = heapq.heappop(heap)
            if target.timer_seq == seq:
                target.timer_seq = 0
                yield target

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].timer_seq != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self._heap)
