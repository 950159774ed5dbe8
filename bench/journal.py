"""Journal throughput: records/s through put() + group commit, and the batch sizes that form.

Two load shapes per durability setting:

- burst: every put in one go, then flush (the writer batches whatever piled up meanwhile);
- paced: the event loop runs between puts (one message per loop turn, as under real
  traffic), so commit reports interleave with puts.

Each put is a new authorization (no coalescing). Figures only; nothing is asserted.

    .venv/bin/python -m bench.journal [--count 20000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gateway.core.records import AuthorizationRecord, AuthState
from gateway.journal import CommitStats, Durability, SqliteJournal


def _fields(txn_id: int) -> dict[str, str]:
    """What a reversal copies from a typical 0200 (as the core would keep it)."""
    stan = f"{txn_id % 1_000_000:06d}"
    return {
        "2": "4761739001010119", "3": "000000", "4": "000000001500", "7": "0908064519",
        "11": stan, "12": "064519", "13": "0908", "22": "051", "25": "00", "32": "200",
        "37": "123456789012", "41": "TERM0001", "42": "MERCHANT0000001", "49": "840",
    }  # fmt: skip


def _record(txn_id: int, now: float) -> AuthorizationRecord:
    return AuthorizationRecord(
        txn_id=txn_id,
        created_at=now,
        updated_at=now,
        state=AuthState.IN_FLIGHT,
        mti="0200",
        terminal_id="TERM0001",
        stan=f"{txn_id % 1_000_000:06d}",
        acquirer_stan=f"{txn_id % 1_000_000:06d}",
        rrn="123456789012",
        amount="000000001500",
        tpdu=b"\x60\x00\x01\x00\x00",
        reversal_fields=_fields(txn_id),
    )


async def _run(path: Path, durability: Durability, count: int, paced: bool) -> str:
    stats: list[CommitStats] = []
    journal = SqliteJournal(path, durability=durability, on_stats=stats.append)
    await journal.start()
    now = time.time()
    records = [_record(i, now) for i in range(1, count + 1)]
    started = time.perf_counter()
    put_time = 0.0
    for record in records:
        t = time.perf_counter()
        journal.put(record)
        put_time += time.perf_counter() - t
        if paced:
            await asyncio.sleep(0)
    await journal.flush()
    elapsed = time.perf_counter() - started
    await journal.close()

    latencies = sorted(s.latency for s in stats)
    batches = [s.records for s in stats]
    return (
        f"{durability:8} {'paced' if paced else 'burst':6} {count / elapsed:9.0f} rec/s  "
        f"commits {len(stats):5}  batch avg {statistics.fmean(batches):7.1f} "
        f"max {max(batches):6}  commit ms avg {1000 * statistics.fmean(latencies):6.2f} "
        f"max {1000 * latencies[-1]:6.2f}  put us {1e6 * put_time / count:5.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="puts per run")
    parser.add_argument("--dir", default=None, help="directory for the journal files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for durability in ("process", "power"):
            for paced in (False, True):
                path = Path(tmp) / f"{durability}-{paced}.db"
                print(await _run(path, durability, args.count, paced), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
