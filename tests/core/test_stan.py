from __future__ import annotations

import pytest

from gateway.core import stan as stan_module
from gateway.core.stan import StanAllocator, StanExhausted


def test_counts_from_the_seed_and_wraps_to_000001() -> None:
    stans = StanAllocator(seed=999_998)
    assert [stans.allocate() for _ in range(4)] == ["999998", "999999", "000001", "000002"]


def test_skips_stans_in_use_until_released() -> None:
    stans = StanAllocator(seed=1)
    stans.hold("000002")
    assert [stans.allocate() for _ in range(2)] == ["000001", "000003"]
    stans.release("000002")
    assert len(stans) == 2


def test_hold_counts_sharers() -> None:
    stans = StanAllocator(seed=5)
    stan = stans.allocate()
    stans.hold(stan)  # a reversal with the original's STAN shares it
    stans.release(stan)
    assert len(stans) == 1
    stans.release(stan)
    assert len(stans) == 0


def test_exhaustion_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stan_module, "STAN_MAX", 10)  # the same logic on a small range
    stans = StanAllocator(seed=1)
    assert [stans.allocate() for _ in range(10)] == [f"{n:06d}" for n in range(1, 11)]
    with pytest.raises(StanExhausted):
        stans.allocate()
    stans.release("000004")
    assert stans.allocate() == "000004"
