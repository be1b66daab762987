"""``lookalike store init|status``: the artifact store the hosts share (docs/OPERATIONS.md, "An object store").

``init`` makes a fresh MinIO / SeaweedFS bucket (AWS buckets are made by their owners)
and proves this host can write, read and delete there; compose runs it once before the
services start. ``status`` says where the store is, which index versions it holds and
how full this host's cache is. Exit code 1 when the store cannot be reached.
"""

from __future__ import annotations

import json
import secrets

import click

from cli.context import CliContext
from core.artifacts import ArtifactError, open_cache, open_store, published_versions
from core.index_store import INDEXES_PREFIX


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
    except ArtifactError as exc:
        raise click.ClickException(str(exc)) from exc
    report = {"store": target.url, "index_versions": versions}
    if ctx.settings.artifact_store:
        cache = open_cache(ctx.settings, target)
        report["cache"] = {"objects": len(cache.keys()), "bytes": cache.size(), "max_bytes": cache.max_bytes}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"store: {report['store']}")
    click.echo(f"index versions: {', '.join(versions) or 'none'}")
    if "cache" in report:
        c = report["cache"]
        click.echo(f"this host's cache: {c['objects']} objects, {c['bytes']:,} of {c['max_bytes']:,} bytes")
