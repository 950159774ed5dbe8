from __future__ import annotations

from gateway.core.schedule import DrainPacer, retry_delay


def test_retry_delays_grow_then_the_last_repeats() -> None:
    delays = (5.0, 10.0, 30.0, 60.0, 300.0)
    assert [retry_delay(delays, n) for n in range(1, 9)] == [5, 10, 30, 60, 300, 300, 300, 300]
    assert retry_delay(delays, 0) == 0.0


def test_pacer_spreads_sends_at_the_rate() -> None:
    pacer = DrainPacer(rate=4.0, now=100.0)
    assert [pacer.next_slot(100.0) for _ in range(5)] == [100.0, 100.25, 100.5, 100.75, 101.0]
    # After a quiet spell the next send goes at once.
    assert pacer.next_slot(200.0) == 200.0
    assert pacer.next_slot(200.0) == 200.25
