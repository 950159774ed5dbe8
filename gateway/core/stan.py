"""STANs the gateway allocates itself: rewritten DE 11 towards the acquirer, reversal STANs."""

from __future__ import annotations

STAN_MAX = 999_999


class StanExhausted(RuntimeError):
    """Every STAN from 000001 to 999999 is in use: nothing can be sent with a fresh one."""


class StanAllocator:
    """A counter over 000001..999999 (wrapping) that skips STANs still in use.

    A STAN stays in use while a request or reversal that carries it may still be answered, so
    that a late answer can never be taken for the answer to a newer message.
    """

    __slots__ = ("_in_use", "_next")

    def __init__(self, seed: int = 1) -> None:
        self._next = (seed - 1) % STAN_MAX + 1
        self._in_use: dict[str, int] = {}

    def allocate(self) -> str:
        """A STAN not in use, held until ``release``. Raises StanExhausted if none is free."""
        in_use = self._in_use
        if len(in_use) >= STAN_MAX:
            raise StanExhausted(f"all {STAN_MAX} STANs are in use")
        for _ in range(STAN_MAX):
            stan = f"{self._next:06d}"
            self._next = self._next % STAN_MAX + 1
            if stan not in in_use:
                in_use[stan] = 1
                return stan
        raise StanExhausted(f"all {STAN_MAX} STANs are in use")

    def hold(self, stan: str) -> None:
        """Mark a STAN in use (again): a recovered reversal, or a reversal sharing it."""
        self._in_use[stan] = self._in_use.get(stan, 0) + 1

    def release(self, stan: str) -> None:
        count = self._in_use.get(stan, 0)
        if count <= 1:
            self._in_use.pop(stan, None)
        else:
            self._in_use[stan] = count - 1

    def __len__(self) -> int:
        return len(self._in_use)
