"""The longest single insert into an index of lingering requests: dict against ShardedDict.

    python -m bench.indexes     (also part of: make bench)

A gateway at a steady rate inserts one key per request and deletes the key of a request that
left its duplicate window, so its indexes hold rate x window live keys while their tables fill
with deleted slots. CPython rebuilds a dict's whole table when it fills: this measures how long
that one insert takes (see gateway/core/sharded.py), median of 5 runs of 4 x live inserts.
"""

from __future__ import annotations

import statistics
import time

from gateway.core.sharded import SHARDS, ShardedDict

RUNS = 5
_Key = tuple[str, str, str]


def longest_insert_ms(index: dict[_Key, int] | ShardedDict[_Key, int], live: int) -> float:
    """Churn ``index`` at ``live`` keys; the longest insert once it is full."""
    keys = [("0200", f"{n % 999_999 + 1:06d}", f"TERM{n % 97:04d}") for n in range(live * 4)]
    longest = 0.0
    clock = time.perf_counter
    for n, key in enumerate(keys):
        started = clock()
        index[key] = n
        took = clock() - started
        if n >= live:
            del index[keys[n - live]]
            longest = max(longest, took)
    return longest * 1000


def main() -> None:
    print(f"Longest insert, ms (median of {RUNS} runs); ShardedDict: {SHARDS} shards")
    print("| live keys (rate x 60 s window) | dict | ShardedDict |")
    print("| ---: | ---: | ---: |")
    for rate in (1_000, 10_000):
        live = rate * 60
        plain = statistics.median(longest_insert_ms({}, live) for _ in range(RUNS))
        sharded = statistics.median(longest_insert_ms(ShardedDict(), live) for _ in range(RUNS))
        print(f"| {live:,} ({rate:,}/s) | {plain:.2f} | {sharded:.3f} |")


if __name__ == "__main__":
    main()
