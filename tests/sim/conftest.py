"""Fixtures for the simulator tests: dialects and a running acquirer simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.sim.acquirer import AcquirerSimulator
from gateway.wire.dialect import Dialect, get_dialect


@pytest.fixture
def iso87() -> Dialect:
    return get_dialect("iso87-binary")


@pytest.fixture
def cup() -> Dialect:
    return get_dialect("cup-pos")


@pytest.fixture
async def acquirer(iso87: Dialect) -> AsyncIterator[AcquirerSimulator]:
    """A default simulator (approves everything) on an ephemeral port of 127.0.0.1."""
    sim = AcquirerSimulator(iso87, seed=1)
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()
