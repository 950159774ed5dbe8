"""`make demo`: watch the gateway release every hold that no terminal was told about.

Three parts run together for about half a minute: the acquirer simulator (in this process,
with a share of dropped, late and cut-off answers), the gateway (a real `iso-gateway serve`
subprocess with its own journal) and a fleet of terminals (in this process). At the end the
simulator's ledger is compared with what the terminals were told.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.invariant import check
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalFleet

DIALECT = "iso87-binary"
OUT = Path("demo-out")
TERMINALS = 20
RATE = 100.0  # requests per second across all terminals
COUNT = 2_500
ACQUIRER_TIMEOUT = 2.0  # the gateway gives up on the acquirer after this...
TERMINAL_TIMEOUT = 10.0  # ...well before the terminals give up on the gateway
SETTLE_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gateway_config(acquirer_port: int, listen_port: int, metrics_port: int) -> str:
    return f"""\
[gateway]
listen = "127.0.0.1:{listen_port}"
dialect = "{DIALECT}"
data_dir = "{OUT}"
shutdown_grace = 3.0

[acquirer]
addresses = ["127.0.0.1:{acquirer_port}"]
timeout = {ACQUIRER_TIMEOUT}
echo_interval = 5.0
reconnect_min = 0.2
reconnect_max = 2.0

[reversal]
timeout = 2.0
retry_delays = [0.5, 1, 2, 5]

[metrics]
listen = "127.0.0.1:{metrics_port}"

[logging]
format = "json"
"""


async def _wait_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited at start (see {OUT / 'gateway.log'})")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise SystemExit(f"the gateway did not listen within {seconds} s")


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo() -> int:
    OUT.mkdir(exist_ok=True)
    for stale in OUT.glob("journal.sqlite3*"):
        stale.unlink()
    faults = FaultRates(
        drop_rate=0.03, late_rate=0.03, late=5.0, close_rate=0.002, delay_rate=0.05, delay=0.5
    )
    rules = [
        Rule(
            name="big amounts declined",
            mti=frozenset({"0100", "0200"}),
            amount_min=40_000,
            response_code="51",
        )
    ]
    simulator = AcquirerSimulator(DIALECT, rules=rules, faults=faults, seed=7)
    ledger_port = _free_port()
    await simulator.start("127.0.0.1", 0, ledger_http=("127.0.0.1", ledger_port))
    listen_port, metrics_port = _free_port(), _free_port()
    config = OUT / "gateway.toml"
    config.write_text(_gateway_config(simulator.port, listen_port, metrics_port))
    log_file = (OUT / "gateway.log").open("wb")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        await _wait_port(listen_port, gateway, 15.0)
        _say("iso-gateway demo")
        _say(
            f"  acquirer simulator  127.0.0.1:{simulator.port}  (ledger: "
            f"http://127.0.0.1:{ledger_port}/ledger)"
        )
        _say(
            f"  gateway             127.0.0.1:{listen_port}  (metrics: "
            f"http://127.0.0.1:{metrics_port}/metrics, log: {OUT / 'gateway.log'})"
        )
        _say(f"  terminals           {TERMINALS}, {RATE:.0f} requests/s, {COUNT} requests")
        _say(
            "  faults              3% of answers dropped, 3% late, 0.2% connection cut, "
            "5% slow; amounts >= 400.00 declined"
        )
        _say()
        fleet = TerminalFleet(
            "127.0.0.1",
            listen_port,
            DIALECT,
            terminals=TERMINALS,
            count=COUNT,
            rate=RATE,
            timeout=TERMINAL_TIMEOUT,
            seed=11,
            progress=_say,
        )
        results = await fleet.run()
        _say("\nterminals done; waiting for the gateway to settle its reversals ...")
        deadline = time.monotonic() + SETTLE_SECONDS
        gateway_view: dict[str, float] = {}
        while time.monotonic() < deadline:
            gateway_view = await asyncio.to_thread(_scrape_reversals, metrics_port)
            settled = gateway_view["owed"] <= gateway_view["acknowledged"] + gateway_view["failed"]
            if settled and check(simulator.ledger, results.records).ok:
                break
            await asyncio.sleep(0.5)
        violations = check(simulator.ledger, results.records)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
        log_file.close()
        await simulator.stop()
    _report(
        results.summary(),
        simulator.snapshot(entries=False),
        gateway_view,
        violations.ok,
        violations,
    )
    return 0 if violations.ok else 1


def _scrape_reversals(port: int) -> dict[str, float]:
    """The gateway's own count of reversals, from its /metrics endpoint."""
    totals: dict[str, float] = {"owed": 0, "acknowledged": 0, "failed": 0, "attempts": 0}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return totals
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "iso_gateway_reversals_total":
                result = sample.labels.get("result", "")
                if result in totals:
                    totals[result] += sample.value
            elif sample.name == "iso_gateway_reversal_attempts_total":
                totals["attempts"] += sample.value
    return totals


def _report(
    told: dict[str, Any],
    host: dict[str, Any],
    gateway: dict[str, float],
    ok: bool,
    violations: Any,
) -> None:
    ledger = host["summary"]
    requests = host["counters"]["requests"]
    reversals = sum(n for mti, n in requests.items() if mti.startswith("04"))
    repeats = sum(n for mti, n in requests.items() if mti in {"0401", "0421"})
    faults = host["counters"]["faults"]
    _say()
    _say("what the terminals were told")
    _say(f"  transactions                 {told['sent']}")
    _say(f"  approvals delivered          {told['approved']}")
    _say(f"  declined                     {told['declined']}  {told['declined_by_code']}")
    _say(f"  no answer                    {told['no_answer']}")
    _say("what the gateway did")
    _say(f"  reversals owed               {gateway['owed']:.0f}")
    _say(f"  reversal messages sent       {gateway['attempts']:.0f}  (first attempts and repeats)")
    _say(f"  reversals acknowledged       {gateway['acknowledged']:.0f}")
    _say(f"  reversals failed             {gateway['failed']:.0f}")
    _say("what the acquirer did")
    _say(f"  approved (funds held)        {ledger['approved']}")
    _say(
        f"  answers dropped/late/cut     {faults.get('drop', 0)}/{faults.get('late', 0)}/"
        f"{faults.get('close', 0)}"
    )
    _say(f"  reversals received           {reversals}  (of them repeats 0401: {repeats})")
    _say(f"  holds released by reversal   {ledger['released']}")
    _say(f"  originals reversed twice     {ledger['reversed_twice']}")
    _say("the money")
    _say(f"  holds left on the ledger     {ledger['holds_open']}")
    _say(f"  ...that no terminal was told about: {len(violations.unreported_holds)}   (must be 0)")
    _say()
    if ok:
        _say(
            "OK: every hold left belongs to an approval a terminal received; "
            "nothing was reversed twice."
        )
    else:
        _say("NOT OK:\n" + violations.describe())
    summary = {"terminals": told, "gateway_reversals": gateway, "acquirer": host, "ok": ok}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(run_demo()))


if __name__ == "__main__":
    main()
