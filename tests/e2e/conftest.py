from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Stack, StackFactory, start_stack, stop_stack


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[StackFactory]:
    stacks: list[Stack] = []

    async def factory(**options: Any) -> Stack:
        stack = await start_stack(tmp_path, **options)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        await stop_stack(stack)
