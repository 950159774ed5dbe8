"""Shared fixtures: where the vectors are, and which real services this machine has."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Stack, StackFactory, start_stack, stop_stack

REPO = Path(__file__).resolve().parents[1]
# A copy of ../shared/vectors (its README gives each set's source and licence), so that a
# clone alone runs every vector test; GATEWAY_VECTORS points at another copy.
VECTORS = Path(os.environ.get("GATEWAY_VECTORS", REPO / "tests" / "vectors"))


def services_required() -> bool:
    """In CI (.ci/run) a missing service fails the run instead of skipping."""
    return os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need_service(name: str, host: str, port: int) -> None:
    """Skip (or fail in CI) when a real service this test talks to is not running."""
    if port_open(host, port):
        return
    reason = f"{name} is not running on {host}:{port}"
    if services_required():
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def need_tool(path: str | None, name: str) -> str:
    """Skip (or fail in CI) when an external tool such as tshark or promtool is missing."""
    if path:
        return path
    reason = f"{name} is not installed"
    if services_required():
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_SERVICES=1; .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        if services_required():
            pytest.fail(f"test vectors not found at {VECTORS}")
        pytest.skip(f"test vectors not found at {VECTORS} (set GATEWAY_VECTORS)")
    return VECTORS


@pytest.fixture
def mosquitto() -> tuple[str, int]:
    need_service("Mosquitto (MQTT)", "127.0.0.1", 1883)
    return ("127.0.0.1", 1883)


@pytest.fixture
def postgres_dsn() -> str:
    need_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
async def make_stack(tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Start the acquirer simulator and a gateway on 127.0.0.1 (see tests/e2e/harness.py)."""
    stacks: list[Stack] = []

    async def factory(**options: Any) -> Stack:
        stack = await start_stack(tmp_path, **options)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        await stop_stack(stack)
