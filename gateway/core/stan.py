"""STANs the gateway allocates itself: rewritten DE 11 towards the acquirer, reversal STANs."""

from __future__ import annotations

from gateway.core.sharded import ShardedDict

STAN_MAX = 999_999
# STANs reserved at a time (one journal write each): a restart skips at most this many.
RESERVATION_BLOCK = 1000


def seed_after(last_reserved: str | None, fallback: int) -> int:
    """The allocator's seed at start: just past the last reservation, else ``fallback``."""
    if last_reserved is None or not last_reserved.isdigit():
        return fallback
    return int(last_reserved) % STAN_MAX + 1


class StanExhausted(RuntimeError):
    """Every STAN from 000001 to 999999 is in use: nothing can be sent with a fresh one."""


class StanAllocator:
    """A counter over 000001..999999 (wrapping) that skips STANs still in use.

    A STAN stays in use while a request or reversal that carries it may still be answered, so
    that a late answer can never be taken for the answer to a newer message.

    Across restarts the counter goes on from a reservation: whenever allocation reaches past
    the last reserved block, the next ``block`` STANs are reserved and ``take_reservation``
    hands out the block's last STAN for the journal, to be stored before any of them is sent.
    A restart seeds the counter just past it, skipping at most a block.
    """

    __slots__ = (
        "_block",
        "_in_use",
        "_in_use_count",
        "_next",
        "_reservation",
        "_reserved_steps",
        "_steps",
    )

    def __init__(self, seed: int = 1, block: int = RESERVATION_BLOCK) -> None:
        self._next = (seed - 1) % STAN_MAX + 1
        # STAN -> holders. Sharded: it holds a STAN for every lingering request (60,000 at
        # 1,000/s), one in and one out per request (see gateway/core/sharded.py).
        self._in_use: ShardedDict[str, int] = ShardedDict()
        self._in_use_count = 0
        self._block = block
        self._steps = 0  # counter positions passed since start (allocated or skipped)
        self._reserved_steps = 0  # positions covered by the last reservation
        self._reservation: str | None = None

    def allocate(self) -> str:
        """A STAN not in use, held until ``release``. Raises StanExhausted if none is free."""
        in_use = self._in_use
        if self._in_use_count >= STAN_MAX:
            raise StanExhausted(f"all {STAN_MAX} STANs are in use")
        for _ in range(STAN_MAX):
            number = self._next
            self._next = number % STAN_MAX + 1
            self._steps += 1
            stan = f"{number:06d}"
            if stan not in in_use:
                in_use[stan] = 1
                self._in_use_count += 1
                if self._steps > self._reserved_steps:
                    self._reserved_steps = self._steps - 1 + self._block
                    self._reservation = f"{(number - 2 + self._block) % STAN_MAX + 1:06d}"
                return stan
        raise StanExhausted(f"all {STAN_MAX} STANs are in use")

    def take_reservation(self) -> str | None:
        """The last STAN of a block reserved since the previous call, if any."""
        reservation, self._reservation = self._reservation, None
        return reservation

    def hold(self, stan: str) -> None:
        """Mark a STAN in use (again): a recovered reversal, or a reversal sharing it."""
        holders = self._in_use.get(stan, 0)
        if not holders:
            self._in_use_count += 1
        self._in_use[stan] = holders + 1

    def release(self, stan: str) -> None:
        holders = self._in_use.get(stan, 0)
        if holders > 1:
            self._in_use[stan] = holders - 1
        elif holders == 1:
            del self._in_use[stan]
            self._in_use_count -= 1

    def __len__(self) -> int:
        return self._in_use_count
