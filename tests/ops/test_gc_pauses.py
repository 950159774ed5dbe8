"""The collector's pauses as operations see them (gateway/ops/gc_pauses.py)."""

from __future__ import annotations

import gc

from gateway.ops.gc_pauses import BUCKETS, GcPauses


def test_every_pass_is_timed_into_a_bucket() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect(0)
        gc.collect(0)
    finally:
        pauses.uninstall()
    gc.collect(0)  # not counted any more
    assert sum(pauses.counts) == 2
    assert 0 < pauses.total_seconds < 1
    buckets = pauses.cumulative()
    assert [bound for bound, _ in buckets] == [*map(str, BUCKETS), "+Inf"]
    assert buckets[-1] == ("+Inf", 2)
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), "cumulative"


def test_a_pass_lands_in_the_first_bucket_that_holds_it() -> None:
    pauses = GcPauses()
    for took in (0.0001, 0.0002, 0.003, 5.0):
        pauses.record(took)
    counts = dict(pauses.cumulative())
    assert counts["0.0002"] == 2, "an upper bound is inclusive, as Prometheus reads it"
    assert counts["0.002"] == 2 and counts["0.005"] == 3
    assert counts["1.0"] == 3 and counts["+Inf"] == 4
    assert pauses.total_seconds == 0.0001 + 0.0002 + 0.003 + 5.0
