"""Fixtures for the journal tests: a journal file per test, a started journal per durability."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.journal import SqliteJournal


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture(params=["process", "power"])
async def journal(
    request: pytest.FixtureRequest, journal_path: Path
) -> AsyncIterator[SqliteJournal]:
    """A started journal, once per durability setting."""
    j = SqliteJournal(journal_path, durability=request.param)
    await j.start()
    yield j
    await j.close()
