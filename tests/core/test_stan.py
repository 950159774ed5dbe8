from __future__ import annotations

import pytest

from gateway.core import stan as stan_module
from gateway.core.stan import StanAllocator, StanExhausted, seed_after


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


def test_a_release_of_a_stan_not_in_use_changes_nothing() -> None:
    stans = StanAllocator(seed=5)
    stans.allocate()
    stans.release("000099")  # a reversal's STAN already released, say
    stans.release("000099")
    assert len(stans) == 1
    stans.hold("000099")
    stans.hold("000099")
    assert len(stans) == 2, "one STAN, two holders"


def test_exhaustion_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stan_module, "STAN_MAX", 10)  # the same logic on a small range
    stans = StanAllocator(seed=1)
    assert [stans.allocate() for _ in range(10)] == [f"{n:06d}" for n in range(1, 11)]
    with pytest.raises(StanExhausted):
        stans.allocate()
    stans.release("000004")
    assert stans.allocate() == "000004"


def test_blocks_are_reserved_before_their_first_stan_is_used() -> None:
    stans = StanAllocator(seed=100, block=3)
    assert stans.take_reservation() is None  # nothing allocated, nothing to keep
    assert stans.allocate() == "000100"
    assert stans.take_reservation() == "000102"  # 100..102
    assert stans.take_reservation() is None
    assert [stans.allocate() for _ in range(2)] == ["000101", "000102"]
    assert stans.take_reservation() is None
    assert stans.allocate() == "000103"
    assert stans.take_reservation() == "000105"


def test_skipped_stans_count_towards_the_block() -> None:
    stans = StanAllocator(seed=1, block=3)
    stans.allocate()
    stans.take_reservation()  # 1..3
    stans.hold("000002")
    stans.hold("000003")
    assert stans.allocate() == "000004"  # past the block: a new one first
    assert stans.take_reservation() == "000006"


def test_reservations_wrap_and_a_restart_resumes_past_them() -> None:
    stans = StanAllocator(seed=999_998, block=5)
    stans.allocate()
    last = stans.take_reservation()
    assert last == "000003"  # 999998, 999999, 1, 2, 3
    assert seed_after(last, fallback=7) == 4
    assert seed_after(None, fallback=7) == 7
    assert seed_after("garbage", fallback=7) == 7
    assert seed_after("999999", fallback=7) == 1
