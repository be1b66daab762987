"""The ``lookalike`` command: one entry point on top of everything, importing downward only."""

from __future__ import annotations

import logging

import click

from cli.catalog import catalog
from cli.context import CliContext
from cli.db import db
from cli.demo import demo
from cli.indexes import indexes
from cli.proxy import proxy
from cli.serve import keys, serve
from cli.stack import stack
from cli.train import evaluate, models, train
from cli.worker import beat, jobs, reindex, retrain, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def lookalike(ctx: click.Context) -> None:
    """Lookalike: visual similar-product search for retail catalogs."""
    ctx.obj = CliContext.from_env()
    logging.basicConfig(level=ctx.obj.settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


lookalike.add_command(db)
lookalike.add_command(catalog)
lookalike.add_command(worker)
lookalike.add_command(beat)
lookalike.add_command(reindex)
lookalike.add_command(retrain)
lookalike.add_command(jobs)
lookalike.add_command(serve)
lookalike.add_command(proxy)
lookalike.add_command(keys)
lookalike.add_command(train)
lookalike.add_command(evaluate)
lookalike.add_command(models)
lookalike.add_command(indexes)
lookalike.add_command(demo)
lookalike.add_command(stack)


def main() -> None:
    lookalike(prog_name="lookalike")
