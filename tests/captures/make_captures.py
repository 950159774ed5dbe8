"""Make the capture files in tests/captures/: real traffic on 127.0.0.1, captured by tshark.

    sudo .venv/bin/python -m tests.captures.make_captures [--out tests/captures]

For each dialect (iso87-binary, cup-pos) and scenario (clean, dropped, linkcut) this starts the
acquirer simulator on a fixed port, starts ``tshark -i lo -f "tcp port PORT" -w FILE``, waits
until tshark says it is capturing, runs a fleet of simulated terminals straight against the
simulator (a capture "in front of the terminals" of a network without our gateway), then
stops tshark. The files are what tshark wrote; nothing is synthesised.

- clean: no faults; amounts from 40 000 minor units up are declined (51) by a rule. In the
  iso87-binary one the terminals pipeline 4 requests at full speed, so segments carry several
  messages.
- dropped: the simulator approves and holds, then never answers 15 % of requests (seeded);
  the terminals give up after 1 s.
- linkcut: the simulator closes the terminal's connection instead of answering 10 % of the
  requests (after approving them); the terminal reconnects for its next request.

Then ``iso87-binary_dropped_reordered.pcapng`` is rewritten from the dropped capture with dpkt
(rewrite.py): segments split, sent out of order and duplicated; the byte streams are unchanged.

Needs root (or the capture capability) for tshark, and a free port range 18583-18590.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
from pathlib import Path

from gateway.replay.capture import read_capture
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalFleet
from gateway.wire.dialect import get_dialect
from tests.captures.rewrite import Rewrite, rewrite

HERE = Path(__file__).resolve().parent
DIALECTS = ("iso87-binary", "cup-pos")
SCENARIOS: dict[str, FaultRates | None] = {
    "clean": None,
    "dropped": FaultRates(drop_rate=0.15),
    "linkcut": FaultRates(close_rate=0.10),
}
BASE_PORT = 18583
TRANSACTIONS = 30
TERMINALS = 4
DECLINE_FROM = 40_000  # minor units: a rule declines these with 51 (insufficient funds)


async def capture_one(dialect: str, scenario: str, port: int, target: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        raise SystemExit("tshark is not installed")
    rules = [Rule(name="big amounts", amount_min=DECLINE_FROM, mti=frozenset({"0100", "0200"}),
                  response_code="51")]  # fmt: skip
    simulator = AcquirerSimulator(dialect, rules=rules, faults=SCENARIOS[scenario], seed=7)
    await simulator.start("127.0.0.1", port)
    target.unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        tshark, "-i", "lo", "-f", f"tcp port {port}", "-w", str(target), "-q",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        while True:  # tshark says so once the capture filter is in place
            line = await asyncio.wait_for(process.stderr.readline(), 20)
            if not line:
                raise SystemExit("tshark exited before capturing")
            if b"Capturing on" in line:
                break
        await asyncio.sleep(0.5)
        # One capture has pipelined terminals at full speed, so that TCP segments carry several
        # messages (the host answers all the requests of one read in one write).
        pipelined = (dialect, scenario) == ("iso87-binary", "clean")
        fleet = TerminalFleet(
            "127.0.0.1", port, dialect,
            terminals=TERMINALS, count=TRANSACTIONS, rate=0.0 if pipelined else 15.0,
            timeout=1.0, seed=11, pipeline=4 if pipelined else 1,
        )  # fmt: skip
        results = await fleet.run()
        await asyncio.sleep(0.3)
        await simulator.stop()
        await asyncio.sleep(0.5)  # let the FINs reach the capture
        summary = results.summary()
        print(
            f"{target.name}: sent {summary['sent']}, approved {summary['approved']}, "
            f"declined {summary['declined']}, no answer {summary['no_answer']}",
            file=sys.stderr,
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        await process.wait()
    target.chmod(0o644)  # tshark writes 0600; these files are meant to be shared


def describe(path: Path, dialect: str) -> str:
    capture = read_capture(path, get_dialect(dialect))
    fates: dict[str, int] = {}
    for txn in capture.transactions:
        fates[txn.fate] = fates.get(txn.fate, 0) + 1
    return (
        f"{path.name}: {len(capture.connections)} connections, {len(capture.messages)} messages, "
        f"{len(capture.transactions)} transactions {fates}, {path.stat().st_size} bytes"
    )


async def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    port = BASE_PORT
    made: list[tuple[Path, str]] = []
    for dialect in DIALECTS:
        for scenario in SCENARIOS:
            target = out / f"{dialect}_{scenario}.pcapng"
            await capture_one(dialect, scenario, port, target)
            made.append((target, dialect))
            port += 1
    source = out / "iso87-binary_dropped.pcapng"
    reordered = out / "iso87-binary_dropped_reordered.pcapng"
    done = rewrite(source, reordered, Rewrite(split=0.6, reverse=0.6, duplicate=0.25, seed=3))
    print(f"{reordered.name}: rewritten from {source.name}: {done}", file=sys.stderr)
    made.append((reordered, "iso87-binary"))
    for path, dialect in made:
        print(describe(path, dialect))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    asyncio.run(main(parser.parse_args().out))
