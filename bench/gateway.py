"""Gateway throughput and added latency, three ways side by side in one run.

    python -m bench.gateway [--quick]     (or: make bench)

Paths, each against the same acquirer simulator (a subprocess):
  direct   terminals -> simulator
  relay    terminals -> bare byte relay (bench/relay.py, the ceiling of any Python proxy) -> sim
  gateway  terminals -> `iso-gateway serve` (journal on, process-crash safe) -> simulator
The terminal fleet runs in this process. Everything shares this machine's cores, so figures
are medians of several runs and ratios between paths measured in the same run. Results are
written to bench/README.md under "## Gateway".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.io import runtime
from gateway.io.runtime import tune_gc
from gateway.sim.terminals import Outcome, TerminalFleet

ROOT = Path(__file__).resolve().parents[1]
DIALECT = "iso87-binary"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_listening(port: int, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


_SEEDS = itertools.count(1)


@dataclass
class Run:
    tps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_txn: float | None
    failures: int


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one_run(
    port: int, terminals: int, pipeline: int, count: int, rate: float, pid: int | None
) -> Run:
    fleet = TerminalFleet(
        "127.0.0.1",
        port,
        DIALECT,
        terminals=terminals,
        pipeline=pipeline,
        count=count,
        rate=rate,
        timeout=10.0,
        # A new seed for every run: terminals start at seeded STANs, and a run that repeated
        # the previous one's STANs, amounts and DE 7 within a second would be answered from
        # the gateway's duplicate cache instead of by the acquirer.
        seed=next(_SEEDS),
    )
    cpu_before = cpu_seconds(pid) if pid else 0.0
    results = await fleet.run()
    cpu_after = cpu_seconds(pid) if pid else 0.0
    answered = [r for r in results.records if r.outcome in {Outcome.APPROVED, Outcome.DECLINED}]
    latencies = [r.latency * 1000 for r in answered if r.latency is not None]
    return Run(
        tps=len(answered) / results.elapsed,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        cpu_us_per_txn=(cpu_after - cpu_before) / len(answered) * 1e6 if pid else None,
        failures=len(results.records) - len(answered),
    )


def median_run(runs: list[Run]) -> Run:
    cpus = [r.cpu_us_per_txn for r in runs if r.cpu_us_per_txn is not None]
    return Run(
        tps=statistics.median(r.tps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        cpu_us_per_txn=statistics.median(cpus) if cpus else None,
        failures=sum(r.failures for r in runs),
    )


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def start_gateway(data_dir: Path, port: int, sim_port: int) -> subprocess.Popen[bytes]:
    """`iso-gateway serve` on its defaults (journal, timeouts, duplicate window), JSON logs."""
    data_dir.mkdir(parents=True)
    config = data_dir / "gateway.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{data_dir}"\n'
        f'[acquirer]\naddresses = ["127.0.0.1:{sim_port}"]\necho_interval = 0\n'
        '[logging]\nformat = "json"\n'
    )
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    return start(command, data_dir / "gw.log")


# A gateway at a steady rate has, besides its requests, each request's timers falling due at
# that rate: its acquirer timeout (15 s) and the end of its duplicate window (60 s after the
# answer). Paced latency is measured once both are under way.
STEADY_AFTER = 15 + 60 + 5


async def main(quick: bool) -> None:
    tune_gc()  # the load generator keeps every record: the same settings as the gateway's
    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    sim_port, relay_port, gw_port = free_port(), free_port(), free_port()
    py = sys.executable
    sim = start(
        [
            py,
            "-m",
            "gateway",
            "sim",
            "acquirer",
            "--listen",
            f"127.0.0.1:{sim_port}",
            "--dialect",
            DIALECT,
        ],
        work / "sim.log",
    )
    relay = start(
        [py, "-m", "bench.relay", str(relay_port), "127.0.0.1", str(sim_port)], work / "relay.log"
    )
    gateway = start_gateway(work / "saturated", gw_port, sim_port)
    extra: list[subprocess.Popen[bytes]] = []
    processes = {
        "direct": (sim_port, None),
        "relay": (relay_port, relay.pid),
        "gateway": (gw_port, gateway.pid),
    }
    try:
        for port, process in ((sim_port, sim), (relay_port, relay), (gw_port, gateway)):
            wait_listening(port, process)
        await asyncio.sleep(0.5)  # the gateway's acquirer link comes up
        repeats = 3 if quick else 5
        scale = 0.3 if quick else 1.0
        cases = [
            ("lock-step", 1, 1, int(1500 * scale)),
            ("lock-step", 10, 1, int(4000 * scale)),
            ("lock-step", 100, 1, int(6000 * scale)),
            ("pipelined x8", 10, 8, int(8000 * scale)),
            ("pipelined x4", 100, 4, int(8000 * scale)),
        ]
        rows = []
        for label, terminals, pipeline, count in cases:
            await one_run(gw_port, terminals, pipeline, 200, 0, None)  # warm-up
            results = {}
            for path, (port, pid) in processes.items():
                runs = [
                    await one_run(port, terminals, pipeline, count, 0, pid) for _ in range(repeats)
                ]
                results[path] = median_run(runs)
            rows.append((label, terminals, results))
            print(label, terminals, {k: round(v.tps) for k, v in results.items()}, flush=True)
        # Added latency at a fixed, moderate rate: what one terminal notices. The direct runs
        # alternate with the gateway's, so that both sides of the difference come from the same
        # minutes of this shared machine (its speed drifts from one spell to the next).
        paced: dict[str, Run] = {}

        async def alternating(paths: dict[str, tuple[int, int | None]]) -> dict[str, Run]:
            """Paced runs through each path in turn, ``repeats`` rounds: medians by path."""
            runs: dict[str, list[Run]] = {name: [] for name in paths}
            for _ in range(repeats):
                for name, (port, pid) in paths.items():
                    runs[name].append(await one_run(port, 10, 4, int(5000 * scale), 1000, pid))
            return {name: median_run(path_runs) for name, path_runs in runs.items()}

        # The gateway of the saturated runs: their timers are still falling due, at up to
        # ten times this rate.
        paced.update(
            await alternating(
                {
                    "direct, after saturation": (sim_port, None),
                    "after saturation": (gw_port, gateway.pid),
                }
            )
        )
        gateway.terminate()  # its work must not count against the next one
        # A gateway that has run at this rate for longer than its timers are long.
        steady_port = free_port()
        steady = start_gateway(work / "steady", steady_port, sim_port)
        extra.append(steady)
        wait_listening(steady_port, steady)
        await asyncio.sleep(0.5)
        warm_up = STEADY_AFTER * (0.3 if quick else 1.0)
        await one_run(steady_port, 10, 4, int(1000 * warm_up), 1000, None)
        paced.update(
            await alternating(
                {
                    "direct": (sim_port, None),
                    "relay": (relay_port, relay.pid),
                    "gateway": (steady_port, steady.pid),
                }
            )
        )
        report = render(rows, paced, repeats)
        print(report)
        write_section(report)
    finally:
        for process in (*extra, gateway, relay, sim):
            process.terminate()
        for process in (*extra, gateway, relay, sim):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def render(rows: list[tuple[str, int, dict[str, Run]]], paced: dict[str, Run], n: int) -> str:
    lines = [
        "## Gateway",
        "",
        f"`python -m bench.gateway`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Load generator, simulator, relay and gateway all "
        f"on this machine; median of {n} runs per cell. Journal on (SQLite WAL, process-crash "
        "safe), one JSON log line per transaction.",
        "",
        "| load | terminals | direct tx/s | relay tx/s | gateway tx/s | gateway / relay "
        "| p50 direct / gateway ms | p99 direct / gateway ms | gateway CPU µs/tx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, terminals, r in rows:
        d, rel, g = r["direct"], r["relay"], r["gateway"]
        lines.append(
            f"| {label} | {terminals} | {d.tps:,.0f} | {rel.tps:,.0f} | {g.tps:,.0f} "
            f"| {g.tps / rel.tps:.2f} | {d.p50_ms:.2f} / {g.p50_ms:.2f} "
            f"| {d.p99_ms:.2f} / {g.p99_ms:.2f} | {g.cpu_us_per_txn or 0:.0f} |"
        )
    d, g, rl = paced["direct"], paced["gateway"], paced["relay"]
    da, a = paced["direct, after saturation"], paced["after saturation"]
    lines += [
        "",
        "Added latency at 1,000 requests/s (10 terminals, up to 4 outstanding each), through a "
        f"gateway that has run at this rate for {STEADY_AFTER} s (its requests' timeouts and "
        "duplicate windows falling due at the same rate), and through the gateway of the "
        "saturated runs above, right after them. Each gateway run follows a direct run (and, "
        "for the steady gateway, a run through the bare relay: what any Python proxy adds), "
        "so both sides of a difference come from the same minutes:",
        "",
        "| | p50 ms | p99 ms | gateway CPU µs/tx |",
        "| --- | ---: | ---: | ---: |",
        f"| direct | {d.p50_ms:.2f} | {d.p99_ms:.2f} | |",
        f"| relay | {rl.p50_ms:.2f} | {rl.p99_ms:.2f} | {rl.cpu_us_per_txn or 0:.0f} |",
        f"| added by the relay | {rl.p50_ms - d.p50_ms:.2f} | {rl.p99_ms - d.p99_ms:.2f} | |",
        f"| gateway, steady | {g.p50_ms:.2f} | {g.p99_ms:.2f} | {g.cpu_us_per_txn or 0:.0f} |",
        f"| **added by the gateway** | **{g.p50_ms - d.p50_ms:.2f}** "
        f"| **{g.p99_ms - d.p99_ms:.2f}** | |",
        f"| direct, alternating with the next row | {da.p50_ms:.2f} | {da.p99_ms:.2f} | |",
        f"| gateway, after saturation | {a.p50_ms:.2f} | {a.p99_ms:.2f} "
        f"| {a.cpu_us_per_txn or 0:.0f} |",
        f"| added, after saturation | {a.p50_ms - da.p50_ms:.2f} | {a.p99_ms - da.p99_ms:.2f} | |",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    """Replace (or append) this benchmark's section of bench/README.md, keeping the others."""
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    head, marker, rest = text.partition("## Gateway")
    if marker:
        _, next_marker, tail = rest.partition("\n## ")
        text = head + section + (("\n## " + tail) if next_marker else "")
    else:
        text = text.rstrip() + "\n\n" + section
    readme.write_text(text.rstrip() + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter runs")
    options = parser.parse_args()
    runtime.run(main(options.quick))
