"""The tests here run twice: on asyncio's event loop and on uvloop's (the gateway's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import trustme
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    del config, item
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway certificate authority, in memory."""
    return trustme.CA()
