"""The ``lookalike`` command: one entry point on top of everything, importing downward only."""

from __future__ import annotations

import click

from cli.catalog import catalog
from cli.context import CliContext
from cli.db import db
from cli.demo import demo
from cli.feedback import feedback
from cli.indexes import indexes
from cli.proxy import proxy
from cli.serve import keys, serve
from cli.stack import stack
from cli.store import store
from cli.train import evaluate, models, train
from cli.worker import beat, jobs, reindex, retrain, worker
from core.config import ConfigError
from core.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True,
              help="Also the libraries' log lines (Alembic's migration steps...); same as LOOKALIKE_VERBOSE=true.")
@click.pass_context
def lookalike(ctx: click.Context, verbose: bool) -> None:
    """Lookalike: visual similar-product search for retail catalogs."""
    try:  # a malformed LOOKALIKE_* variable is a usage error that names it, not a traceback
        ctx.obj = CliContext.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if verbose:  # the processes this one starts (gunicorn, the stack's) get it through settings.to_env()
        ctx.obj.settings = ctx.obj.settings.replace(verbose=True)
    configure_logging(ctx.obj.settings)


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
lookalike.add_command(store)
lookalike.add_command(feedback)
lookalike.add_command(demo)
lookalike.add_command(stack)


def main() -> None:
    lookalike(prog_name="lookalike")
