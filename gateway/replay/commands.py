"""`iso-gateway capture show` and `iso-gateway replay`: read captures, replay them, compare.

    iso-gateway capture show day.pcapng --dialect iso87-binary --port 8583
    iso-gateway replay day.pcapng --dialect iso87-binary --target 127.0.0.1:8583 \\
        --acquirer-listen 127.0.0.1:9000 --as-fast-as-possible

Exit codes: 0 fine (replay: no differences), 1 the replay found differences, 2 trouble (a file
that cannot be read, a gateway that never connected) or bad usage. Output never shows a full
PAN, track data or PIN block.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from gateway.cliutil import Failure, hostport_option
from gateway.replay.capture import Capture, Roles, read_capture
from gateway.replay.host import ReplayHost
from gateway.replay.pcapfile import CaptureFileError
from gateway.replay.plan import ReplayPlan, make_plan
from gateway.replay.replayer import Replayer, ReplayError, ReplayOptions
from gateway.replay.report import DEFAULT_IGNORED, ReplayReport, build_report, render
from gateway.replay.show import as_json
from gateway.replay.show import render as render_capture
from gateway.wire.dialect import Dialect, DialectError, get_dialect

EXIT_DIFFERENCES = 1
EXIT_TROUBLE = 2


class Trouble(Failure):
    """The replay could not run: exit code 2 (1 is kept for "the replay differs")."""

    exit_code = EXIT_TROUBLE


def _field_list(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[str]:
    del ctx
    if value.strip().lower() in ("", "none"):
        return frozenset()
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not all(name.isdigit() and 1 < int(name) <= 192 for name in names):
        raise click.BadParameter(
            "a comma-separated list of field numbers, e.g. 7,12,13", param=param
        )
    return frozenset(str(int(name)) for name in names)


def _mti_list(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[str]:
    del ctx
    mtis = [part.strip() for part in value.split(",") if part.strip()]
    if not all(len(mti) == 4 and mti.isdigit() for mti in mtis):
        raise click.BadParameter("a comma-separated list of MTIs, e.g. 0800,0400", param=param)
    return frozenset(mtis)


def _dialect(name: str, specs_dirs: Sequence[Path]) -> Dialect:
    try:
        return get_dialect(name, specs_dirs)
    except DialectError as error:
        raise Trouble(str(error)) from None


def _read(file: Path, dialect: Dialect, roles: Roles) -> Capture:
    try:
        return read_capture(file, dialect, roles)
    except CaptureFileError as error:
        raise Trouble(str(error)) from None


_common_options = [
    click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option("--dialect", "dialect_name", required=True, help="Dialect of the traffic."),
    click.option("--port", "ports", multiple=True, type=int,
                 help="Read only connections with an end on this port (repeatable); that end "
                      "is the host unless --host-port names others."),
    click.option("--host-port", "host_ports", multiple=True, type=int,
                 help="The end on this port is the host (when the capture has no SYN)."),
    click.option("--terminal-port", "terminal_ports", multiple=True, type=int,
                 help="The end on this port is the terminal."),
    click.option("--specs-dir", "specs_dirs", multiple=True, type=click.Path(path_type=Path),
                 help="Extra directory of dialect files."),
    click.option("--json", "as_json_output", is_flag=True, help="Machine-readable output."),
]  # fmt: skip


def _with_common_options(func: Any) -> Any:
    for option in reversed(_common_options):
        func = option(func)
    return func


@click.group()
def capture() -> None:
    """Captured traffic (pcap/pcapng from tcpdump, tshark or the gateway's own [capture])."""


@capture.command("show")
@_with_common_options
def capture_show(
    file: Path,
    dialect_name: str,
    ports: tuple[int, ...],
    host_ports: tuple[int, ...],
    terminal_ports: tuple[int, ...],
    specs_dirs: tuple[Path, ...],
    as_json_output: bool,
) -> None:
    """One line per message, requests paired with responses, unanswered ones flagged."""
    dialect = _dialect(dialect_name, specs_dirs)
    found = _read(file, dialect, Roles.of(ports, host_ports or ports, terminal_ports))
    if as_json_output:
        click.echo(json.dumps(as_json(found), indent=2))
    else:
        click.echo(render_capture(found))


@click.command()
@_with_common_options
@click.option(
    "--target",
    required=True,
    callback=hostport_option,
    metavar="HOST:PORT",
    help="The gateway under test: where its terminals connect.",
)
@click.option(
    "--acquirer-listen",
    required=True,
    callback=hostport_option,
    metavar="HOST:PORT",
    help="Where the built-in host listens (the gateway's acquirer address).",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Captured pace times this.",
)
@click.option(
    "--as-fast-as-possible",
    "fast",
    is_flag=True,
    help="No pacing: each request as soon as its turn comes.",
)
@click.option(
    "--ignore",
    default=",".join(sorted(DEFAULT_IGNORED, key=int)),
    show_default=True,
    callback=_field_list,
    help="Fields not compared (volatile); 'none' for none.",
)
@click.option(
    "--skip-mti",
    default="",
    callback=_mti_list,
    help="Terminal requests not to send, e.g. 0800,0400 for a capture taken between "
    "a gateway and its acquirer.",
)
@click.option(
    "--response-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds each request waits for the gateway's answer.",
)
@click.option(
    "--link-wait",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the gateway to connect to the built-in host.",
)
@click.option(
    "--settle",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait at the end for reversals still owed.",
)
@click.option(
    "--quiet",
    type=float,
    default=1.0,
    show_default=True,
    help="Then stop once the built-in host has heard nothing for this long.",
)
def replay(
    file: Path,
    dialect_name: str,
    ports: tuple[int, ...],
    host_ports: tuple[int, ...],
    terminal_ports: tuple[int, ...],
    specs_dirs: tuple[Path, ...],
    as_json_output: bool,
    target: tuple[str, int],
    acquirer_listen: tuple[str, int],
    speed: float,
    fast: bool,
    ignore: frozenset[str],
    skip_mti: frozenset[str],
    response_timeout: float,
    link_wait: float,
    settle: float,
    quiet: float,
) -> None:
    """Replay a capture's terminal requests through a gateway and compare with the capture.

    The built-in host answers the gateway with the captured answers (none where the capture
    has none, a closed link where the capture shows a cut), acknowledges the gateway's own
    reversals and network messages, and the report says, per transaction, captured vs
    replayed. Exit code 1 when anything differs.
    """  # fmt: skip
    dialect = _dialect(dialect_name, specs_dirs)
    found = _read(file, dialect, Roles.of(ports, host_ports or ports, terminal_ports))
    plan = make_plan(found, skip_mti)
    if not plan.steps:
        raise Trouble(f"{file}: no terminal requests to replay")
    options = ReplayOptions(
        speed=None if fast else speed,
        response_timeout=response_timeout,
        link_wait=link_wait,
        settle=settle,
        quiet=quiet,
    )
    target_text = f"{target[0]}:{target[1]}"
    try:
        report = asyncio.run(_replay(plan, dialect, target, acquirer_listen, options, ignore))
    except (ReplayError, OSError) as error:
        raise Trouble(str(error)) from None
    report.target = target_text
    if as_json_output:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(render(report))
    if not report.ok:
        sys.exit(EXIT_DIFFERENCES)


async def _replay(
    plan: ReplayPlan,
    dialect: Dialect,
    target: tuple[str, int],
    listen: tuple[str, int],
    options: ReplayOptions,
    ignore: frozenset[str],
) -> ReplayReport:
    host = ReplayHost(plan, dialect)
    await host.start(*listen)
    click.echo(
        f"built-in host listening on {listen[0]}:{host.port}; waiting for the gateway to "
        f"connect, then replaying {len(plan.steps)} request(s) to {target[0]}:{target[1]}",
        err=True,
    )
    try:
        run = await Replayer(plan, dialect, target, host, options).run()
    finally:
        await host.stop()
    return build_report(run, target=f"{target[0]}:{target[1]}", ignore=ignore)
