"""The `iso-gateway` command line.

Errors are one clear line on stderr and exit code 1 (2 for usage errors), never a traceback.
No command prints a full PAN, track data or PIN block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.app import run
from gateway.cliutil import Failure
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.core.records import OPEN_REVERSAL_STATES, ReversalRecord, ReversalState
from gateway.journal.base import JournalError
from gateway.journal.sqlite import SqliteJournal
from gateway.ops import status as gateway_status
from gateway.ops.mqtt import MqttConfigError
from gateway.replay.commands import capture, replay
from gateway.sim.commands import sim
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import DialectError, find_dialects, get_dialect
from gateway.wire.framing import LENGTH_HEADERS, FramingError, read_frame
from gateway.wire.masking import mask_pan

_T = TypeVar("_T")


@click.group()
@click.version_option(package_name="iso-gateway")
def cli() -> None:
    """ISO 8583 gateway with automatic reversal."""


# dialects and decode ----------------------------------------------------------------------


@cli.command()
@click.option(
    "--specs-dir",
    "specs_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra directory of dialect files (repeatable).",
)
def dialects(specs_dirs: Sequence[Path]) -> None:
    """List the dialects this gateway can speak."""
    try:
        found = find_dialects(specs_dirs)
    except DialectError as error:  # a --specs-dir that does not exist, a name given twice
        raise Failure(str(error)) from None
    for name, path in sorted(found.items()):
        try:
            dialect = get_dialect(name, specs_dirs)
        except DialectError as error:
            # One bad file must not hide the others: show it and carry on.
            click.echo(f"{name:<16} BROKEN: {error}")
            continue
        f = dialect.framing
        framing = (
            f.length
            + (" +tpdu" if f.tpdu else "")
            + (f" +header{f.header_length}" if f.header_length else "")
        )
        click.echo(f"{name:<16} {framing:<28} {dialect.description}  [{path}]")


def _read_input(hex_text: str | None, file: Path | None, input_format: str | None) -> bytes:
    """The frame bytes from HEX, ``-`` (stdin) or --file.

    HEX and stdin are hex text unless ``--input raw``: many ISO 8583 messages in ASCII are
    themselves nothing but hex digits, so guessing from the content would misread them.
    A file is hex text when named .hex/.txt, raw bytes otherwise, unless --input says.
    """
    if file is not None and hex_text is not None:
        raise click.UsageError("give the message as HEX, - or --file, not both")
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as error:
            raise Failure(f"cannot read {file}: {error.strerror}") from None
        if input_format is None:
            input_format = "hex" if file.suffix.lower() in {".hex", ".txt"} else "raw"
        source = str(file)
    elif hex_text == "-":
        data = sys.stdin.buffer.read()
        source = "stdin"
    elif hex_text is not None:
        if input_format == "raw":
            raise click.UsageError("--input raw reads stdin or --file; HEX is hex text")
        return _unhex(hex_text, "HEX")
    else:
        raise click.UsageError("give the message as HEX, --file PATH or - (stdin)")
    if input_format == "raw":
        return data
    return _unhex(data.decode("ascii", errors="replace"), source)


_HEX_SEPARATORS = str.maketrans("", "", ":")  # tshark and Wireshark copy bytes as 01:aa:...


def _looks_hex(text: str) -> bool:
    """Only hex digits once whitespace and ':' separators are left out (and not empty)."""
    stripped = "".join(text.split()).translate(_HEX_SEPARATORS)
    return bool(stripped) and all(c in "0123456789abcdefABCDEF" for c in stripped)


def _unhex(text: str, source: str = "input") -> bytes:
    """Hex text (whitespace and ':' between bytes allowed) -> bytes. The text is never echoed:
    it holds card data."""
    hint = "" if source == "HEX" else " (for message bytes use --input raw)"
    if not _looks_hex(text):
        raise Failure(f"{source} is not hexadecimal text{hint}")
    stripped = "".join(text.split()).translate(_HEX_SEPARATORS)
    if len(stripped) % 2:
        raise Failure(f"{source} has an odd number of hex digits ({len(stripped)}){hint}")
    return bytes.fromhex(stripped)


@cli.command()
@click.argument("hex_text", metavar="[HEX | -]", required=False)
@click.option("--dialect", "dialect_name", required=True, help="Dialect name (see `dialects`).")
@click.option(
    "--file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the message from a file (.hex/.txt files hold hex text).",
)
@click.option(
    "--input",
    "input_format",
    type=click.Choice(["hex", "raw"]),
    help="Stdin or --file holds hex text or the message bytes (default: hex for "
    "stdin; for a file, hex if named .hex/.txt, raw otherwise).",
)
@click.option(
    "--framing",
    "length",
    type=click.Choice(LENGTH_HEADERS),
    help="Override the dialect's length header (none: a bare message).",
)
@click.option("--specs-dir", "specs_dirs", multiple=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def decode(
    *,
    hex_text: str | None,
    dialect_name: str,
    file: Path | None,
    input_format: str | None,
    length: str | None,
    specs_dirs: Sequence[Path],
    as_json: bool,
) -> None:
    """Decode one framed ISO 8583 message and print its fields (PAN masked)."""
    try:
        known = find_dialects(specs_dirs)
        if dialect_name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise Failure(f"unknown dialect {dialect_name!r}; known: {names}")
        dialect = get_dialect(dialect_name, specs_dirs)
    except DialectError as error:
        raise Failure(str(error)) from None
    framing = dialect.framing if length is None else replace(dialect.framing, length=length)  # type: ignore[arg-type]
    data = _read_input(hex_text, file, input_format)
    try:
        frame = read_frame(framing, data)
        if frame.is_keepalive:
            raise Failure("the frame is a keep-alive (length 0): it carries no message")
        message = Codec(dialect).decode(frame.message)
    except (FramingError, CodecError) as error:
        # An ASCII message piped in without --input raw was read as hex: say how to fix that.
        hint = " (stdin was read as hex text; for message bytes use --input raw)"
        read_as_hex = hex_text == "-" and input_format is None
        raise Failure(f"cannot decode: {error}{hint if read_as_hex else ''}") from None
    fields = message.masked()
    parts: dict[str, Any] = {
        "length_header": framing.length,
        "frame_bytes": len(data),
        "tpdu": frame.tpdu.hex().upper() or None,
        "header": frame.header.hex().upper() or None,
        "message_bytes": len(frame.message),
    }
    if as_json:
        result = {"dialect": dialect.name, "framing": parts, "mti": message.mti, "fields": fields}
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"dialect   {dialect.name}")
    click.echo(f"framing   {parts['length_header']}, {parts['frame_bytes']} bytes")
    if parts["tpdu"]:
        click.echo(f"tpdu      {parts['tpdu']}")
    if parts["header"]:
        click.echo(f"header    {parts['header']}")
    click.echo(f"MTI       {message.mti}")
    for field_id, value in sorted(fields.items(), key=lambda item: int(item[0])):
        desc = str(dialect.spec.get(field_id, {}).get("desc", ""))
        # Text fields may hold control characters (a peer's bytes): escape them, so that
        # printing a message cannot drive the terminal.
        shown = value if value.isprintable() else value.encode("unicode_escape").decode("ascii")
        click.echo(f"DE {field_id:>3}  {desc[:34]:<34} {shown}")


# serve ------------------------------------------------------------------------------------


def _config_from_flags(config_path: Path | None, overrides: dict[str, Any]) -> GatewayConfig:
    try:
        # A flag not given is None (or an empty tuple for a repeatable one); anything else,
        # even 0 or "", is the operator's and is validated like the file's value.
        given = {k: v for k, v in overrides.items() if v is not None and v != []}
        return load_config(config_path, overrides=given)
    except ConfigError as error:
        raise Failure(str(error)) from None


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML configuration file.",
)
@click.option("--listen", help="Where terminals connect, HOST:PORT.")
@click.option("--acquirer", multiple=True, help="Acquirer HOST:PORT; repeat for failover.")
@click.option("--dialect", help="Dialect name.")
@click.option("--journal", type=click.Path(path_type=Path), help="Journal file (SQLite).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Directory for the journal.")
@click.option("--acquirer-timeout", type=float, help="Seconds to wait for the acquirer.")
@click.option("--metrics", help="Serve /metrics on HOST:PORT.")
@click.option("--mqtt", help="Publish events to mqtt://HOST:PORT.")
def serve(
    config_path: Path | None,
    listen: str | None,
    acquirer: tuple[str, ...],
    dialect: str | None,
    journal: Path | None,
    data_dir: Path | None,
    acquirer_timeout: float | None,
    metrics: str | None,
    mqtt: str | None,
) -> None:
    """Run the gateway between terminals and the acquirer."""
    config = _config_from_flags(
        config_path,
        {
            "gateway.listen": listen,
            "acquirer.addresses": list(acquirer),
            "gateway.dialect": dialect,
            "journal.path": journal,
            "gateway.data_dir": data_dir,
            "acquirer.timeout": acquirer_timeout,
            "metrics.listen": metrics,
            "mqtt.url": mqtt,
        },
    )
    try:
        get_dialect(config.gateway.dialect, config.gateway.specs_dirs)
    except DialectError as error:
        raise Failure(str(error)) from None
    try:
        run(config)
    except (ConfigError, MqttConfigError) as error:  # what only start-up shows
        raise Failure(str(error)) from None
    except OSError as error:  # the listen port (or another) taken, a path not writable
        raise Failure(f"cannot start: {error}") from None


# saf: the store-and-forward queue of reversals -----------------------------------------------


def _journal_for(config_path: Path | None, journal: Path | None) -> SqliteJournal:
    config = _config_from_flags(config_path, {"journal.path": journal})
    path = config.journal_path
    if not path.exists():
        raise Failure(f"no journal at {path} (use --journal or --config)")
    # Look before opening it as a journal, which would add the schema to any SQLite file.
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.Error:
        version = None
    if version is None:
        raise Failure(f"{path} is not a gateway journal")
    return SqliteJournal(path)


def _on_journal(store: SqliteJournal, work: Coroutine[Any, Any, _T]) -> _T:
    """Run one journal operation for a command; its errors as one line, never a traceback."""
    try:
        return asyncio.run(work)
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            raise Failure(
                f"journal {store.path} is locked by another writer (a gateway committing, "
                "a prune): try again"
            ) from None
        raise Failure(f"journal {store.path}: {error}") from None
    except (sqlite3.Error, JournalError) as error:
        raise Failure(f"journal {store.path}: {error}") from None


journal_options = [
    click.option(
        "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
    ),
    click.option("--journal", type=click.Path(path_type=Path), help="Journal file."),
]


def _with_journal_options(func: Any) -> Any:
    for option in reversed(journal_options):
        func = option(func)
    return func


@cli.group()
def saf() -> None:
    """Reversals owed to the acquirer (store and forward)."""


@saf.command("list")
@_with_journal_options
@click.option("--all", "show_all", is_flag=True, help="Include acknowledged and cancelled ones.")
@click.option("--json", "as_json", is_flag=True)
def saf_list(config_path: Path | None, journal: Path | None, show_all: bool, as_json: bool) -> None:
    """Show owed, sent and failed reversals (PAN masked)."""
    store = _journal_for(config_path, journal)
    states = set(ReversalState) if show_all else set(OPEN_REVERSAL_STATES)
    rows = [_reversal_row(r) for r in _on_journal(store, store.list_reversals(states))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no reversals owed")
        return
    header = (
        "ID",
        "TXN",
        "STATE",
        "REASON",
        "TRIES",
        "MTI",
        "STAN",
        "TERMINAL",
        "AMOUNT",
        "PAN",
        "LAST RC",
        "CREATED (UTC)",
    )
    table = [header, *(tuple(str(value) for value in row.values()) for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


def _reversal_row(record: ReversalRecord) -> dict[str, Any]:
    fields = record.fields
    pan = fields.get("2")
    return {
        "id": record.reversal_id,
        "txn": record.txn_id,
        "state": str(record.state),
        "reason": str(record.reason),
        "attempts": record.attempts,
        "mti": record.mti,
        "stan": record.stan,
        "terminal": fields.get("41", "-"),
        "amount": fields.get("4", "-"),
        "pan": mask_pan(pan) if pan else "-",
        "last_rc": record.last_response_code or "-",
        "created": datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


@saf.command("retry")
@_with_journal_options
@click.argument("reversal_ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Put every failed reversal back in the queue.")
def saf_retry(
    config_path: Path | None, journal: Path | None, reversal_ids: tuple[int, ...], all_failed: bool
) -> None:
    """Put failed reversals back in the queue (a running gateway picks them up within 1 s)."""
    if bool(reversal_ids) == all_failed:
        raise click.UsageError("give reversal IDs or --all-failed (not both)")
    if any(not 0 < rid < 2**63 for rid in reversal_ids):
        raise click.BadParameter("reversal IDs are positive numbers", param_hint="REVERSAL_IDS")
    store = _journal_for(config_path, journal)
    ids = None if all_failed else list(reversal_ids)
    requeued = _on_journal(store, store.requeue_failed(ids))
    missing = sorted(set(reversal_ids) - set(requeued))
    if requeued:
        click.echo(f"requeued {len(requeued)} reversal(s): {', '.join(map(str, requeued))}")
    else:
        click.echo("nothing requeued")
    if missing:
        raise Failure(f"not failed or not found: {', '.join(map(str, missing))}")


# status ------------------------------------------------------------------------------------


@cli.command()
@click.option("--metrics", "metrics_at", help="The gateway's metrics: HOST:PORT or a URL.")
@_with_journal_options
@click.option(
    "--sample",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between two scrapes, for rates (0: one scrape, no rates).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(
    metrics_at: str | None,
    config_path: Path | None,
    journal: Path | None,
    sample: float,
    as_json: bool,
) -> None:
    """One-screen summary: links, in flight, owed and failed reversals (no card data).

    Reads the running gateway's metrics (--metrics, or metrics.listen of --config); when the
    gateway does not answer (or with --journal), reads the journal instead.
    """
    summary: dict[str, Any] | None = None
    if metrics_at is not None and journal is not None:
        raise click.UsageError("give --metrics or --journal, not both")
    if metrics_at is None and journal is None and config_path is not None:
        listen = _config_from_flags(config_path, {}).metrics.listen
        if listen:
            try:
                summary = _status_from_metrics(gateway_status.metrics_url(listen), sample)
            except gateway_status.StatusError as error:
                click.echo(f"note: {error}; reading the journal", err=True)
    elif metrics_at is not None:
        try:
            summary = _status_from_metrics(gateway_status.metrics_url(metrics_at), sample)
        except gateway_status.StatusError as error:
            raise Failure(str(error)) from None
    if summary is None:
        store = _journal_for(config_path, journal)
        authorizations, reversals = _on_journal(store, store.load_open())
        summary = gateway_status.status_from_journal(authorizations, reversals, time.time())
        summary["path"] = str(store.path)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(gateway_status.render(summary))


def _status_from_metrics(url: str, sample: float) -> dict[str, Any]:
    earlier = None
    if sample > 0:
        earlier = gateway_status.fetch_metrics(url)
        time.sleep(sample)
    summary = gateway_status.status_from_metrics(gateway_status.fetch_metrics(url), earlier, sample)
    summary["url"] = url
    return summary


cli.add_command(sim)
cli.add_command(capture)
cli.add_command(replay)


def main() -> None:
    cli()
