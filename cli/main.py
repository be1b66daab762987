"""The ``lookalike`` command: one entry point on top of everything, importing downward only."""

from __future__ import annotations

import logging

import click

from cli.context import CliContext
from cli.db import db


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def lookalike(ctx: click.Context) -> None:
    """Lookalike: visual similar-product search for retail catalogs."""
    ctx.obj = CliContext.from_env()
    logging.basicConfig(level=ctx.obj.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


lookalike.add_command(db)


def main() -> None:
    lookalike(prog_name="lookalike")
