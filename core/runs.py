"""Training runs in the artifact store: a finished run directory is published once, read anywhere.

A run directory (trainer/run_dir.py: config, metrics JSONL, plots, checkpoints) is
written on the host that trains. With an object store (``LOOKALIKE_ARTIFACT_STORE``)
the finished run is published as the directory version ``runs/<name>/``: every file,
then ``FILES.json`` last (core.artifacts.versions). Only a run that finished is
published, so a crash mid-run publishes nothing, and the run keeps resuming from its
local directory on the host that trains it. Any other host reads a published run
through its own cache, each file checked against the list. With the local store
there is one host and the run is read where it was written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.artifacts import (
    VersionNotPublished,
    open_cache,
    open_store,
    publish_directory,
    published_versions,
    read_directory,
)
from core.config import Settings

RUNS_PREFIX = "runs/"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RunNotFound(LookupError):
    """No run of that name: neither published in the store nor on this host."""


def run_prefix(name: str) -> str:
    """The store prefix of run ``name``; ValueError for a name that is not a plain run name."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a run name: {name!r} (letters, digits, '.', '_' and '-')")
    return f"{RUNS_PREFIX}{name}/"


def publish_run(settings: Settings, run_dir: Path) -> str | None:
    """Publish the *finished* run in ``run_dir`` as ``runs/<its name>/``; its prefix, or None without a store.

    Call it once training returned: a run is published when finished and never changes
    afterwards, so a retry (a worker killed after publishing) keeps the published version
    as it is, even if the rerun rewrote a plot. Hidden files are not published.
    """
    if not settings.artifact_store:
        return None
    store = open_store(settings)
    prefix = run_prefix(Path(run_dir).name)
    try:
        read_directory(store, prefix)
        return prefix
    except VersionNotPublished:
        pass
    publish_directory(store, prefix, Path(run_dir))
    return prefix


def local_run_dirs(settings: Settings, name: str) -> list[Path]:
    """Where this host writes run ``name``: retrains under ``<artifacts>/runs``, ``lookalike train``
    under ``<artifacts>/models/runs`` (cli/train.py)."""
    run_prefix(name)
    return [settings.resolved_artifacts_dir / "runs" / name, settings.models_dir / "runs" / name]


@contextmanager
def open_run(settings: Settings, name: str) -> Iterator[dict[str, Path]]:
    """The files of run ``name`` (relative name -> local path) for the duration of the block.

    A run published in the store is read from it through this host's cache (the files are
    pinned meanwhile), whichever host trained it; otherwise this host's own run directory.
    Raises RunNotFound, or StoreUnavailable when the store cannot be reached.
    """
    if settings.artifact_store:
        store = open_store(settings)
        try:
            version = read_directory(store, run_prefix(name))
        except VersionNotPublished:
            pass
        else:
            with open_cache(settings, store).fetch_version(version) as pinned:
                yield pinned.paths
            return
    for directory in local_run_dirs(settings, name):
        if directory.is_dir():
            yield {p.relative_to(directory).as_posix(): p
                   for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".")}
            return
    where = "in the store or on this host" if settings.artifact_store else "on this host"
    raise RunNotFound(f"no finished run named {name!r} {where}")


def published_runs(settings: Settings) -> list[str]:
    """Names of the runs published in the store (none without one)."""
    if not settings.artifact_store:
        return []
    return [p[len(RUNS_PREFIX):-1] for p in published_versions(open_store(settings), RUNS_PREFIX)]
