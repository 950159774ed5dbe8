"""The `iso-gateway` command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="iso-gateway")
def cli() -> None:
    """ISO 8583 gateway with automatic reversal."""


def main() -> None:
    cli()
