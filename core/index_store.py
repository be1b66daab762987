"""Index versions in the artifact store: shared before they are published, fetched where served.

With an object store configured (``LOOKALIKE_ARTIFACT_STORE``), the host that builds a
version uploads its whole directory (core.artifacts.versions: the files, then the file
list) before publish makes it active, so every API host that follows the publish can
fetch it; a host serves the version from its cache, pinned for as long as it maps the
files. Without a store nothing changes: versions are read in place from
``indexes/<version>``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from core.artifacts import (
    PinnedVersion,
    VersionNotPublished,
    delete_directory,
    open_cache,
    open_store,
    publish_directory,
    read_directory,
)
from core.config import Settings
from core.db import IndexVersion
from core.index.manifest import MANIFEST_FILE
from core.registry import index_directory

INDEXES_PREFIX = "indexes/"


def version_prefix(version: str) -> str:
    return f"{INDEXES_PREFIX}{version}/"


def share_index_version(settings: Settings, row: IndexVersion) -> bool:
    """Upload ``row``'s directory to the store unless it is there already; True if uploaded."""
    if not settings.artifact_store:
        return False
    store = open_store(settings)
    try:
        read_directory(store, version_prefix(row.version))
        return False  # shared by an earlier publish (a rollback to it, a retried job)
    except VersionNotPublished:
        pass
    directory = index_directory(settings, row)  # called on the host that built it
    if not (directory / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"index manifest not found: {directory / MANIFEST_FILE} "
                                "(the version is neither in the store nor on this host)")
    publish_directory(store, version_prefix(row.version), directory)
    return True


def served_index_files(settings: Settings, row: IndexVersion) -> tuple[Path, PinnedVersion | None]:
    """The directory to load ``row`` from, and the pin that keeps its cached files (None: read in place).

    The local directory when this host has it (it built the version, or there is no
    store); else every file from the store, checked against the version's file list.
    The caller closes the pin when it stops mapping the files.
    """
    if not settings.artifact_store:
        return index_directory(settings, row), None
    # With a store, the recorded path is where the *building* host put the files; only this
    # host's own indexes folder is read in place (it built the version itself).
    local = settings.indexes_dir / row.version
    if (local / MANIFEST_FILE).is_file():
        return local, None
    store = open_store(settings)
    try:
        version = read_directory(store, version_prefix(row.version))
    except VersionNotPublished:
        raise FileNotFoundError(f"index manifest not found: index {row.version} is not on this host "
                                "and not in the artifact store") from None
    pinned = open_cache(settings, store).fetch_version(version)
    return pinned.paths[MANIFEST_FILE].parent, pinned


def delete_shared_versions(settings: Settings, versions: Collection[str]) -> list[str]:
    """Retention: remove these versions from the store, each whole (its file list first).

    One listing of ``indexes/`` finds which of them still have objects (a retired version
    stays in SQL for good: probing each one on every run would grow without end); the
    prefixes deleted now are returned.
    """
    if not settings.artifact_store or not versions:
        return []
    store = open_store(settings)
    present = {key[len(INDEXES_PREFIX):].split("/", 1)[0] for key in store.list_keys(INDEXES_PREFIX)}
    doomed = [version_prefix(v) for v in sorted(present & set(versions))]
    for prefix in doomed:
        delete_directory(store, prefix)
    return doomed
