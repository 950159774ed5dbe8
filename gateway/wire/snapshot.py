"""``@snapshot``: immutable value classes on the hot path (frames; the core's events, commands
and records). In the lowest layer so that both the wire and the core can use it.

A frozen dataclass pays for its immutability at run time: its ``__init__`` sets every field
through ``object.__setattr__``, 3x slower than a plain one (1.6 µs against 0.55 µs for a
15-field record), and the gateway builds about fifteen of these per transaction. ``@snapshot``
is a slotted, hashable dataclass that type checkers see as frozen (``dataclass_transform``
with ``frozen_default``): mypy, strict on the package, rejects any assignment to a field, so
the guarantee holds where the code is written instead of being checked on every construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def snapshot(cls: type[_T]) -> type[_T]:
    # unsafe_hash: hashable like a frozen dataclass (a field holding a dict still refuses).
    return dataclass(slots=True, unsafe_hash=True)(cls)
