"""What every `iso-gateway` command shares: one-line errors and HOST:PORT options."""

from __future__ import annotations

from typing import Any

import click

from gateway.config import parse_hostport


class Failure(click.ClickException):
    """Printed as 'error: ...' (no traceback) with exit code 1 (subclasses may change it)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def hostport_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    """click callback: 'HOST:PORT' (or '[v6]:PORT', ':PORT' for all addresses) -> (host, port)."""
    del ctx
    if value is None:
        return None
    try:
        return parse_hostport(value, what=f"--{param.name}".replace("_", "-"))
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None
