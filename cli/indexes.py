"""``lookalike indexes list|rollback``: the index versions, and serving an older one again.

A rollback is :func:`core.publish.republish_index`, the same checks and publish the
API's ``POST /api/v1/indexes/{version}/publish`` runs: the version must be kept on
disk with intact files and a loadable model; the publish notifies the API processes,
which hot-swap (docs/OPERATIONS.md, "Upgrades and rollbacks"). Exit code 1 when the
version is refused.
"""

from __future__ import annotations

import json
from typing import Any

import click

from cli.context import CliContext
from core.publish import IndexNotFound, IndexNotPublishable, republish_index
from core.registry import index_to_dict, list_indexes


@click.group()
def indexes() -> None:
    """Index versions: list them, roll back to a kept one."""


@indexes.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_command(ctx: CliContext, limit: int, as_json: bool) -> None:
    """Index versions, newest first; `*` marks the active one (what the API serves)."""
    rows = [index_to_dict(i) for i in list_indexes(ctx.sessions, limit)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no index yet: run `lookalike reindex`")
        return
    click.echo(f"  {'version':<28} {'status':<8} {'model':<28} {'images':>8}  {'created':<19}  published")
    for r in rows:
        mark = "*" if r["status"] == "active" else " "
        click.echo(f"{mark} {r['version']:<28} {r['status']:<8} {r['model_version'] or '-':<28} "
                   f"{r['image_count']:>8}  {r['created_at'][:19]:<19}  {_time(r['published_at'])}")


@indexes.command()
@click.argument("version")
@click.pass_obj
def rollback(ctx: CliContext, version: str) -> None:
    """Serve index VERSION again (a ready version kept on disk), with its model."""
    try:
        message = republish_index(ctx.settings, ctx.sessions, version)
    except (IndexNotFound, IndexNotPublishable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"published index {message.index_version} (model {message.model_version}); API processes "
               f"swap to it on the notification, or within {ctx.settings.index_poll_seconds:g} s by polling")


def _time(value: Any) -> str:
    return value[:19] if value else "-"
