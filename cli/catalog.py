"""``lookalike catalog``: import, sample data, list and soft-delete catalog items, find near duplicates.

Exit codes of ``catalog import`` and ``catalog sample``: 0 when the import ran and
at least one row is in the catalog as the source describes it (rejected rows are
listed with their line and reason but do not fail the command, since the good
rows were kept), or when the source was empty; 1 when the source could not be
read at all, when every row was rejected, or with ``--strict`` when any row was
rejected. ``catalog delete`` exits 1 if some external id was not found (the
others are still deleted).

The schema is checked (and the embedded SQLite database migrated) by
:class:`cli.context.CliContext` when the commands first touch the database.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from cli.context import CliContext
from core.catalog import (
    DEFAULT_DATASET_DIR,
    CatalogFormatError,
    CatalogSource,
    DeleteOutcome,
    ImportFormat,
    ImportReport,
    SampleDataset,
    Split,
    delete_items,
    fashion_mnist_source,
    import_rows,
    list_items,
    open_source,
)
from core.db import ImageStatus, ItemStatus, session_scope
from core.duplicate_scans import ReportTooLarge, save_scan
from core.duplicates import NoActiveIndex, find_duplicates_with, report_to_dict
from core.media import MediaStore

_STATUS_CHOICES = [status.value for status in ItemStatus] + ["all"]


@click.group()
def catalog() -> None:
    """Catalog items: import, sample data, list, delete, near duplicates."""


@catalog.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice([f.value for f in ImportFormat]),
              help="Source format; detected from the path when left out (.csv, .jsonl, a directory).")
@click.option("--delete-missing", is_flag=True,
              help="Soft-delete active items that the source does not list (a full-catalog sync).")
@click.option("--strict", is_flag=True, help="Exit with 1 if any row was rejected.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
@click.pass_obj
def import_command(ctx: CliContext, path: Path, fmt: str | None, delete_missing: bool, strict: bool,
                   progress: bool | None) -> None:
    """Import the catalog at PATH (CSV, JSONL, or a folder of images with one sub-folder per category)."""
    try:
        source = open_source(path, ImportFormat(fmt) if fmt else None)
    except CatalogFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    report = import_source(ctx, source, progress=progress, delete_missing=delete_missing)
    _finish(report, strict=strict)


@catalog.command("sample")
@click.argument("dataset", type=click.Choice([d.value for d in SampleDataset]))
@click.option("--limit", type=click.IntRange(min=1), help="Import only this many items, balanced across classes.")
@click.option("--split", type=click.Choice([s.value for s in Split]), default=Split.TRAIN.value, show_default=True)
@click.option("--dataset-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASET_DIR,
              show_default=True, help="Where the gzipped idx files are.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
@click.pass_obj
def sample_command(ctx: CliContext, dataset: str, limit: int | None, split: str, dataset_dir: Path,
                   progress: bool | None) -> None:
    """Build a sample catalog from DATASET (read locally, never downloaded)."""
    try:
        source = fashion_mnist_source(dataset_dir, split=Split(split), limit=limit)
    except CatalogFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    _finish(import_source(ctx, source, progress=progress, delete_missing=False), strict=False)


@catalog.command("list")
@click.option("--category", help="Only items of this category.")
@click.option("--status", type=click.Choice(_STATUS_CHOICES), default=ItemStatus.ACTIVE.value, show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.pass_obj
def list_command(ctx: CliContext, category: str | None, status: str, limit: int, offset: int) -> None:
    """List catalog items, oldest first."""
    with session_scope(ctx.sessions) as session:
        page = list_items(session, category=category, limit=limit, offset=offset,
                          status=None if status == "all" else ItemStatus(status))
        for item in page.items:
            active = sum(1 for image in item.images if image.status is ImageStatus.ACTIVE)
            title = " ".join(item.title.split())  # one line per item, tabs only as separators
            click.echo(f"{item.external_id}\t{item.category or '-'}\t{item.status.value}\t"
                       f"{active} image(s)\t{title}")
    shown = f"{offset + 1}-{offset + len(page.items)}" if page.items else "none"
    click.echo(f"showing {shown} of {page.total} item(s)", err=True)


@catalog.command("delete")
@click.argument("external_ids", nargs=-1, required=True)
@click.pass_obj
def delete_command(ctx: CliContext, external_ids: tuple[str, ...]) -> None:
    """Soft-delete items by external id (they stop appearing in results; a re-import revives them)."""
    with session_scope(ctx.sessions) as session:
        outcomes = delete_items(session, external_ids)
    for external_id, outcome in outcomes.items():
        text = {DeleteOutcome.DELETED: "deleted", DeleteOutcome.ALREADY_DELETED: "was already deleted",
                DeleteOutcome.NOT_FOUND: "not found"}[outcome]
        click.echo(f"{external_id}: {text}", err=outcome is DeleteOutcome.NOT_FOUND)
    if DeleteOutcome.NOT_FOUND in outcomes.values():
        click.get_current_context().exit(1)


@catalog.command("duplicates")
@click.option("--threshold", type=click.FloatRange(min=0),
              help="Embedding distance below which two photos are candidates (default: calibrated on the catalog).")
@click.option("--ratio", type=click.FloatRange(min=0, min_open=True),
              help="Calibration: this x the median nearest-other-item distance [LOOKALIKE_DUPLICATE_RATIO].")
@click.option("--min-similarity", type=click.FloatRange(min=-1, max=1),
              help="Photo similarity a candidate must reach; -1 accepts every candidate "
                   "[LOOKALIKE_DUPLICATE_MIN_SIMILARITY].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--save", is_flag=True,
              help="Store the report as the latest scan (a succeeded duplicates job), which "
                   "GET /api/v1/duplicates and the /duplicates page then serve.")
@click.pass_obj
def duplicates_command(ctx: CliContext, threshold: float | None, ratio: float | None, min_similarity: float | None,
                       as_json: bool, save: bool) -> None:
    """Groups of items whose photos are near duplicates: candidates from the active index and the photos'
    descriptors, verified on the photos themselves (docs/ARCHITECTURE.md). The scan runs in this process;
    POST /api/v1/duplicates/scans runs the same one on a worker."""
    try:
        report = find_duplicates_with(ctx.settings, ctx.sessions, ratio=ratio, threshold=threshold,
                                      min_similarity=min_similarity)
    except NoActiveIndex as exc:
        raise click.ClickException(str(exc)) from exc
    if save:
        try:
            job_id = save_scan(ctx.sessions, report, {"threshold": threshold, "ratio": ratio,
                                                      "min_similarity": min_similarity})
        except ReportTooLarge as exc:
            raise click.ClickException(f"not saved: {exc}") from exc
        click.echo(f"saved as scan job {job_id}", err=True)
    if as_json:
        click.echo(json.dumps(report_to_dict(report), indent=2))
        return
    for group in report.groups:
        click.echo(f"{group.min_distance:.4f}\t" + "\t".join(group.items))
    how = "calibrated" if report.calibrated else "given"
    click.echo(f"{len(report.groups)} group(s) among {report.images} image(s) of index {report.index_version}; "
               f"{report.candidates} candidate pair(s) below distance {report.threshold:.4f} ({how}, median "
               f"nearest-other distance {report.median_distance:.4f}) verified at photo similarity >= "
               f"{report.min_similarity:.3f}; {report.signatures_computed} signature(s) computed", err=True)


def import_source(ctx: CliContext, source: CatalogSource, *, progress: bool | None,
                  delete_missing: bool = False) -> ImportReport:
    """Import ``source`` with a tqdm bar (shared by ``catalog import|sample`` and ``demo``)."""
    # One sync() per chunk instead of an fsync per image: see MediaStore.sync.
    store = MediaStore.from_settings(ctx.settings, fsync=False)
    with tqdm(total=source.total_hint, unit="row", desc="import", disable=None if progress is None else not progress,
              dynamic_ncols=True) as bar:
        return import_rows(source.rows, sessions=ctx.sessions, store=store, progress=bar.update,
                           delete_missing=delete_missing, roots=source.import_roots(ctx.settings.import_roots))


def _finish(report: ImportReport, *, strict: bool) -> None:
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(report.summary())
    nothing_imported = report.errors and report.imported == 0
    if nothing_imported or (strict and report.errors):
        click.get_current_context().exit(1)

