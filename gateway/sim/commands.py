"""`iso-gateway sim ...`: run the acquirer simulator or a fleet of terminals from the shell.

    iso-gateway sim acquirer --listen 127.0.0.1:9100 --dialect iso87-binary --drop-rate 0.05
    iso-gateway sim terminals --target 127.0.0.1:9000 --dialect iso87-binary --count 1000

Errors are one line on stderr and exit code 1 (2 for usage errors). Nothing printed carries a
full PAN: the ledger keeps masked PANs only and the fleet summary has no card data at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from gateway.cliutil import Failure, hostport_option
from gateway.config import ConfigError, client_tls_context, server_tls_context
from gateway.io import runtime
from gateway.io.runtime import tune_gc
from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import FaultRates, RulesError, SimSettings, load_settings
from gateway.sim.terminals import TerminalFleet, format_summary, stderr_progress
from gateway.wire.dialect import Dialect, DialectError, get_dialect

# What an error about a TLS file calls it: the flag it came from.
_TLS_FLAGS = {"ca": "--tls-ca", "cert": "--tls-cert/--tls-key", "client_ca": "--tls-client-ca"}


def _load_dialect(name: str, specs_dirs: Sequence[Path]) -> Dialect:
    try:
        return get_dialect(name, specs_dirs)
    except DialectError as error:
        raise Failure(str(error)) from None


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop)


@click.group()
def sim() -> None:
    """Simulators: an acquirer host with a ledger of held funds, and POS terminals."""


# acquirer -----------------------------------------------------------------------------------


@sim.command()
@click.option(
    "--listen",
    required=True,
    callback=hostport_option,
    metavar="HOST:PORT",
    help="Where the simulated acquirer listens (port 0: any free port).",
)
@click.option(
    "--dialect",
    "dialect_name",
    required=True,
    metavar="NAME",
    help="Dialect it speaks (see `iso-gateway dialects`).",
)
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Rules file (TOML or JSON): response codes and faults per request.",
)
@click.option("--seed", type=int, help="Seed for the fault draws (repeatable runs).")
@click.option(
    "--ledger-http",
    callback=hostport_option,
    metavar="HOST:PORT",
    help="Serve the ledger as JSON on http://HOST:PORT/ledger.",
)
@click.option(
    "--ledger-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Keep the ledger as JSON in this file (rewritten after changes).",
)
@click.option("--drop-rate", type=float, help="Share of requests never answered.")
@click.option("--delay-rate", type=float, help="Share answered after --delay seconds.")
@click.option("--delay", type=float, help="Seconds of a delayed answer (default 1).")
@click.option("--late-rate", type=float, help="Share answered after --late seconds.")
@click.option("--late", type=float, help="Seconds of a late answer (default 30).")
@click.option("--close-rate", type=float, help="Share answered by closing the connection.")
@click.option("--garbage-rate", type=float, help="Share answered with random bytes.")
@click.option(
    "--duplicate-reversal-code",
    metavar="CODE",
    help="Answer to a second reversal of the same original (default 00).",
)
@click.option("--specs-dir", "specs_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Extra directory of dialect files (repeatable).")  # fmt: skip
@click.option("--tls-cert", type=click.Path(path_type=Path),
              help="Speak TLS only, with this certificate (PEM).")  # fmt: skip
@click.option("--tls-key", type=click.Path(path_type=Path), help="The certificate's key (PEM).")
@click.option("--tls-client-ca", type=click.Path(path_type=Path),
              help="Require client certificates signed by this CA (mutual TLS).")  # fmt: skip
def acquirer(  # click passes options by name
    *,
    listen: tuple[str, int],
    dialect_name: str,
    rules_file: Path | None,
    seed: int | None,
    ledger_http: tuple[str, int] | None,
    ledger_file: Path | None,
    drop_rate: float | None,
    delay_rate: float | None,
    delay: float | None,
    late_rate: float | None,
    late: float | None,
    close_rate: float | None,
    garbage_rate: float | None,
    duplicate_reversal_code: str | None,
    specs_dirs: Sequence[Path],
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
) -> None:
    """Run a simulated acquirer host until Ctrl-C; print its ledger of held funds at exit.

    It approves everything (DE 39 00) unless rules say otherwise, holds the amount of every
    approved 0100/0200, releases it on the first matching reversal, and counts the rest.
    """
    dialect = _load_dialect(dialect_name, specs_dirs)
    try:
        settings = load_settings(rules_file) if rules_file is not None else SimSettings()
        overrides = {
            "drop_rate": drop_rate,
            "delay_rate": delay_rate,
            "delay": delay,
            "late_rate": late_rate,
            "late": late,
            "close_rate": close_rate,
            "garbage_rate": garbage_rate,
        }
        faults = dataclasses.replace(
            settings.faults, **{key: value for key, value in overrides.items() if value is not None}
        )
    except RulesError as error:
        raise Failure(str(error)) from None
    code = duplicate_reversal_code or settings.duplicate_reversal_code or "00"
    if len(code) != 2 or not code.isalnum():
        raise click.BadParameter(
            "a 2-character response code", param_hint="--duplicate-reversal-code"
        )
    if (tls_key or tls_client_ca) and not tls_cert:
        raise click.BadParameter("needs --tls-cert", param_hint="--tls-key/--tls-client-ca")
    try:
        tls = server_tls_context(_TLS_FLAGS, tls_cert, tls_key, tls_client_ca) if tls_cert else None
    except ConfigError as error:
        raise Failure(str(error)) from None
    simulator = AcquirerSimulator(
        dialect,
        tls=tls,
        rules=settings.rules,
        faults=faults,
        seed=seed if seed is not None else settings.seed,
        duplicate_reversal_code=code,
        ledger_file=ledger_file,
    )
    # On uvloop, as the gateway, for its collector policy (gateway/io/runtime.py): the ledger
    # grows with every approval.
    runtime.run(_serve_acquirer(simulator, listen, ledger_http, faults))


async def _serve_acquirer(
    simulator: AcquirerSimulator,
    listen: tuple[str, int],
    ledger_http: tuple[str, int] | None,
    faults: FaultRates,
) -> None:
    stop = asyncio.Event()
    _on_signals(stop.set)
    try:
        await simulator.start(*listen, ledger_http=ledger_http)
    except OSError as error:
        raise Failure(f"cannot listen on {listen[0]}:{listen[1]}: {error.strerror}") from None
    tune_gc()
    click.echo(
        f"acquirer simulator ({simulator.dialect.name}) listening on "
        f"{simulator.host}:{simulator.port}"
    )
    if simulator.http_port is not None and ledger_http is not None:
        click.echo(f"ledger: http://{ledger_http[0]}:{simulator.http_port}/ledger")
    if faults.any:
        click.echo(f"faults: {_describe_faults(faults)}")
    if simulator.rules.rules:
        click.echo(f"rules: {len(simulator.rules.rules)}")
    click.echo("Ctrl-C to stop.")
    try:
        await stop.wait()
    finally:
        await simulator.stop()
    click.echo(format_ledger(simulator.ledger.summary(), simulator.counters.requests))


def _describe_faults(faults: FaultRates) -> str:
    parts = [
        f"{name} {rate:.1%}"
        for name, rate in (
            ("drop", faults.drop_rate),
            ("close", faults.close_rate),
            ("garbage", faults.garbage_rate),
            (f"late ({faults.late:g} s)", faults.late_rate),
            (f"delay ({faults.delay:g} s)", faults.delay_rate),
        )
        if rate > 0
    ]
    return ", ".join(parts)


def format_ledger(summary: Mapping[str, int], requests: Mapping[str, int]) -> str:
    """The ledger summary as a newcomer reads it (amounts in minor units, as DE 4 has them)."""
    seen = ", ".join(f"{mti}: {n}" for mti, n in sorted(requests.items())) or "none"
    return "\n".join(
        (
            "ledger of held funds",
            f"  requests seen        {seen}",
            f"  approved (held)      {summary['approved']}   declined {summary['declined']}",
            f"  still held           {summary['holds_open']}  "
            f"(amount {summary['held_amount']} in minor units)",
            f"  released             {summary['released']}  (amount {summary['released_amount']})",
            f"  reversals            {summary['reversals']}: released a hold "
            f"{summary['reversals_released']}, repeats {summary['reversals_repeat']}, "
            f"duplicate {summary['reversals_duplicate']}, "
            f"original unknown {summary['reversals_unknown']}",
            f"  reversed twice       {summary['reversed_twice']}",
        )
    )


# terminals ----------------------------------------------------------------------------------


@sim.command()
@click.option(
    "--target",
    required=True,
    callback=hostport_option,
    metavar="HOST:PORT",
    help="Where to connect: the gateway (or the acquirer simulator directly).",
)
@click.option(
    "--dialect", "dialect_name", required=True, metavar="NAME", help="Dialect the terminals speak."
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Requests per second across all terminals (0: as fast as answered).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Requests to send in total.",
)
@click.option(
    "--terminals",
    "terminal_count",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Terminals, each with its own connection.",
)
@click.option(
    "--pipeline",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Requests outstanding per terminal (1: wait for each answer).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a terminal waits for an answer.",
)
@click.option("--seed", type=int, help="Seed for the generated traffic.")
@click.option(
    "--reverse-on-timeout",
    is_flag=True,
    help="After a timeout a terminal sends its own reversal (as CUP terminals do).",
)
@click.option("--progress", is_flag=True, help="A progress line on stderr every second.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--specs-dir", "specs_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Extra directory of dialect files (repeatable).")  # fmt: skip
@click.option("--tls", "use_tls", is_flag=True, help="Connect with TLS.")
@click.option("--tls-ca", type=click.Path(path_type=Path),
              help="CA of the gateway's certificate (default: the system's).")  # fmt: skip
@click.option("--tls-cert", type=click.Path(path_type=Path),
              help="The terminals' own certificate, for a gateway that asks for one.")  # fmt: skip
@click.option("--tls-key", type=click.Path(path_type=Path), help="Its key (PEM).")
def terminals(
    *,
    target: tuple[str, int],
    dialect_name: str,
    rate: float,
    count: int,
    terminal_count: int,
    pipeline: int,
    timeout: float,
    seed: int | None,
    reverse_on_timeout: bool,
    progress: bool,
    as_json: bool,
    specs_dirs: Sequence[Path],
    use_tls: bool,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Send 0100/0200 traffic from simulated POS terminals and report what they were told."""
    dialect = _load_dialect(dialect_name, specs_dirs)
    if (tls_ca or tls_cert or tls_key) and not use_tls:
        raise click.BadParameter("needs --tls", param_hint="--tls-ca/--tls-cert/--tls-key")
    try:
        tls = client_tls_context(_TLS_FLAGS, tls_ca, tls_cert, tls_key) if use_tls else None
    except ConfigError as error:
        raise Failure(str(error)) from None
    fleet = TerminalFleet(
        target[0],
        target[1],
        dialect,
        terminals=terminal_count,
        count=count,
        rate=rate,
        pipeline=pipeline,
        timeout=timeout,
        seed=seed,
        reverse_on_timeout=reverse_on_timeout,
        progress=stderr_progress if progress else None,
        tls=tls,
    )

    async def run() -> dict[str, Any]:
        _on_signals(fleet.stop)
        results = await fleet.run()
        return results.summary()

    summary = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{terminal_count} terminals -> {target[0]}:{target[1]} ({dialect.name})")
        click.echo(format_summary(summary))
    if summary["sent"] == 0:
        raise Failure(f"no request could be sent: cannot connect to {target[0]}:{target[1]}")


if __name__ == "__main__":  # pragma: no cover - `python -m gateway.sim.commands ...`
    sim(sys.argv[1:])
