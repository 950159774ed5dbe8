"""How `iso-gateway serve` builds its journal from the configuration."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from gateway.app import build_service
from gateway.config import load_config


async def test_the_journal_indexes_sales_by_terminal_only_under_stan_rewrite(
    tmp_path: Path,
) -> None:
    """A terminal's late reversal is tied to its sale by terminal and STAN under STAN rewrite
    only; without it the index would just cost every transaction."""

    async def started_with(stan_mode: str) -> list[str]:
        overrides = {"gateway.data_dir": tmp_path, "acquirer.stan_mode": stan_mode}
        service = build_service(load_config(None, environ={}, overrides=overrides))
        await service.journal.start()
        await service.journal.close()
        path = load_config(None, environ={}, overrides=overrides).journal_path
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            return [name for (name,) in rows]

    assert "authorizations_terminal" in await started_with("rewrite")
    assert "authorizations_terminal" not in await started_with("passthrough")
