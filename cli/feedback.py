"""``lookalike feedback add|list|export``: judgements on (query, result) pairs from the shell.

The same storage and rules as ``POST/GET /api/v1/feedback`` (:mod:`core.feedback`,
docs/ARCHITECTURE.md, "Feedback"): ``add`` upserts one judgement per (query, result,
source), refusing unknown items and self-pairs (exit 1, nothing stored); ``export``
writes the CSV the API's export streams, whose ``a,b,y`` columns the trainer reads as
a pairs file. A merchandiser's ``dissimilar`` mark takes effect on the next
similar-by-item query.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cli.context import CliContext
from core.atomic_files import replacing
from core.db import FeedbackJudgement, FeedbackSource, session_scope
from core.feedback import FeedbackError, Judgement, feedback_csv, list_feedback, record_feedback

JUDGEMENTS = click.Choice([j.value for j in FeedbackJudgement])
SOURCES = click.Choice([s.value for s in FeedbackSource])


@click.group()
def feedback() -> None:
    """Feedback on similar items: record, list and export judgements."""


@feedback.command()
@click.argument("query")
@click.argument("result")
@click.argument("judgement", type=JUDGEMENTS)
@click.option("--source", type=SOURCES, default=FeedbackSource.MERCHANDISER.value, show_default=True)
@click.option("--weight", type=float, default=1.0, show_default=True, help="A finite number > 0.")
@click.pass_obj
def add(ctx: CliContext, query: str, result: str, judgement: str, source: str, weight: float) -> None:
    """For item QUERY, item RESULT is JUDGEMENT (similar or dissimilar)."""
    try:
        wanted = Judgement(query=query, result=result, judgement=FeedbackJudgement(judgement),
                           source=FeedbackSource(source), weight=weight)
    except FeedbackError as exc:  # the weight rule is the Judgement's, as for the API
        raise click.BadParameter(str(exc), param_hint="--weight") from exc
    try:
        with session_scope(ctx.sessions) as s:
            (stored,) = record_feedback(s, [wanted])
    except FeedbackError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"recorded #{stored.id}: {stored.query} -> {stored.result} {stored.judgement.value} "
               f"({stored.source.value}, weight {stored.weight:g})")


@feedback.command("list")
@click.option("--query", default=None, help="Only judgements for this query item (external id).")
@click.option("--source", type=SOURCES, default=None)
@click.option("--judgement", type=JUDGEMENTS, default=None)
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the API's judgement objects).")
@click.pass_obj
def list_command(ctx: CliContext, query: str | None, source: str | None, judgement: str | None, limit: int,
                 as_json: bool) -> None:
    """Stored judgements, oldest first."""
    with session_scope(ctx.sessions) as s:
        page = list_feedback(s, query=query, source=FeedbackSource(source) if source else None,
                             judgement=FeedbackJudgement(judgement) if judgement else None, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in page.records], indent=2))
        return
    if not page.records:
        click.echo("no feedback yet")
        return
    for r in page.records:
        click.echo(f"#{r.id:<6} {r.query:<24} {r.result:<24} {r.judgement.value:<10} {r.source.value:<12} "
                   f"{r.weight:g}")
    if page.next_cursor is not None:
        click.echo("... more: raise --limit, or use `lookalike feedback export`")


@feedback.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the CSV here (atomically); default: standard output.")
@click.option("--query", default=None, help="Only judgements for this query item (external id).")
@click.option("--source", type=SOURCES, default=None)
@click.option("--judgement", type=JUDGEMENTS, default=None)
@click.pass_obj
def export(ctx: CliContext, out: Path | None, query: str | None, source: str | None, judgement: str | None) -> None:
    """Every matching judgement as CSV (a,b,y,...): a pairs file the trainer reads as it is."""
    chunks = feedback_csv(ctx.sessions, query=query, source=FeedbackSource(source) if source else None,
                          judgement=FeedbackJudgement(judgement) if judgement else None)
    if out is None:
        for chunk in chunks:
            sys.stdout.write(chunk)
        return
    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        for chunk in chunks:
            fh.write(chunk)
    click.echo(f"wrote {out}", err=True)
