"""``lookalike store init|status``: the artifact store the hosts share (docs/OPERATIONS.md, "An object store").

``init`` makes a fresh MinIO / SeaweedFS bucket (AWS buckets are made by their owners)
and proves this host can write, read and delete there; compose runs it once before the
services start. ``status`` says where the store is, which index versions it holds and
how full this host's cache is; ``run NAME`` shows (and ``--to DIR`` copies) a finished
training run, read from the store on any host. Exit code 1 when the store cannot be reached.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import click

from cli.context import CliContext
from core.artifacts import ArtifactError, open_cache, open_store, published_versions
from core.index_store import INDEXES_PREFIX
from core.runs import RunNotFound, open_run, published_runs


@click.group()
def store() -> None:
    """The shared artifact store: create and check it, see what it holds."""


@store.command()
@click.pass_obj
def init(ctx: CliContext) -> None:
    """Create the bucket if it is missing, then write, read and delete a probe object."""
    target = open_store(ctx.settings)
    probe = f"probe/{secrets.token_hex(8)}"
    try:
        target.prepare()
        target.put_bytes(probe, b"lookalike")
        if target.read_bytes(probe) != b"lookalike":
            raise click.ClickException(f"{target.url} returned other bytes than were written")
        target.delete([probe])
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"artifact store ready: {target.url}")


@store.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(ctx: CliContext, as_json: bool) -> None:
    """Where the store is, the index versions it holds, this host's cache."""
    target = open_store(ctx.settings)
    try:
        versions = [p[len(INDEXES_PREFIX):-1] for p in published_versions(target, INDEXES_PREFIX)]
        runs = published_runs(ctx.settings)
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from exc
    report = {"store": target.url, "index_versions": versions, "runs": runs}
    if ctx.settings.artifact_store:
        cache = open_cache(ctx.settings, target)
        report["cache"] = {"objects": len(cache.keys()), "bytes": cache.size(), "max_bytes": cache.max_bytes}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"store: {report['store']}")
    click.echo(f"index versions: {', '.join(versions) or 'none'}")
    click.echo(f"training runs: {', '.join(runs) or 'none'}")
    if "cache" in report:
        c = report["cache"]
        click.echo(f"this host's cache: {c['objects']} objects, {c['bytes']:,} of {c['max_bytes']:,} bytes")


@store.command()
@click.argument("name")
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Copy the run's files into this (new or empty) directory.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: the files and the per-epoch metrics.")
@click.pass_obj
def run(ctx: CliContext, name: str, dest: Path | None, as_json: bool) -> None:
    """A finished training run NAME (e.g. retrain-12): its files and per-epoch metrics, from any host."""
    try:
        with open_run(ctx.settings, name) as files:
            metrics = files.get("metrics.jsonl")
            epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics else []
            sizes = {rel: path.stat().st_size for rel, path in files.items()}
            if dest is not None:
                if dest.exists() and any(dest.iterdir()):
                    raise click.ClickException(f"{dest} is not empty")
                for rel, path in files.items():
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest / rel)
    except (RunNotFound, ValueError, ArtifactError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"run": name, "files": sizes, "epochs": epochs}, indent=2))
        return
    click.echo(f"run {name}: {len(sizes)} files ({', '.join(sorted(sizes))})")
    for record in epochs:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                          if not isinstance(v, (dict, list)))
        click.echo(f"  {shown}")
    if dest is not None:
        click.echo(f"copied to {dest}")
