"""A dict split into many small ones, so that no single insert rebuilds a large table.

CPython grows a dict by rebuilding its whole table, and a dict that sees as many deletes as
inserts (the core's indexes of lingering requests: one in, one out, for every request) is
rebuilt each time its entries array fills up, however few entries are live. Measured
(bench/README.md): a rebuild takes ~3 ms at 60,000 live entries (1,000 requests/s over the 60 s
duplicate window) and ~26 ms at 600,000 (10,000/s); the core's request indexes, filled and
emptied in step, rebuild in the same insert, so the event loop stopped for ~12 ms at 1,000/s.
Split 256 ways, each rebuild moves 1/256 of that.

Only what the core uses: point lookups, inserts, deletes, the shard of a key (to look up and
then delete at one hash) and an unordered walk of the values
(the core never lets the order of a walk reach its commands: hashes of strings differ from one
process to the next).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

SHARDS = 256
_MASK = SHARDS - 1


class ShardedDict(Generic[K, V]):
    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[K, V]] = [{} for _ in range(SHARDS)]

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: object = None) -> object:
        return self._shards[hash(key) & _MASK].get(key, default)

    def shard(self, key: K) -> dict[K, V]:
        """The one dict that holds ``key``: several operations on a key for one hash."""
        return self._shards[hash(key) & _MASK]

    def setdefault(self, key: K, default: V) -> V:
        return self._shards[hash(key) & _MASK].setdefault(key, default)

    def __getitem__(self, key: K) -> V:
        return self._shards[hash(key) & _MASK][key]

    def __setitem__(self, key: K, value: V) -> None:
        self._shards[hash(key) & _MASK][key] = value

    def __delitem__(self, key: K) -> None:
        del self._shards[hash(key) & _MASK][key]

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) & _MASK]

    def __len__(self) -> int:
        """Counts every shard: for tests and reports, not for a per-message path."""
        return sum(map(len, self._shards))

    def __bool__(self) -> bool:
        return any(self._shards)

    def values(self) -> Iterator[V]:
        """Every value, in no particular order."""
        for shard in self._shards:
            yield from shard.values()

    def __repr__(self) -> str:
        return f"ShardedDict({len(self)} entries)"
