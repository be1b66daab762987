"""Versioned directories in a store: files first, the file list with checksums last.

An index version, a model's checkpoint folder or a training run is a *directory
version*: a folder of files published under one key prefix. Object stores have no
rename, so atomicity comes from order instead: every file is uploaded, then
``FILES.json`` (each file's size and sha256) last. A reader lists nothing and trusts
nothing until ``FILES.json`` exists, then checks each file it fetches against it
(core.artifacts.cache). A writer that dies half-way leaves files without a list: an
unpublished version that no reader sees and that retention deletes whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.artifacts.store import ArtifactError, ArtifactNotFound, ArtifactStore, check_key, check_prefix
from core.atomic_files import sha256_file

FILE_LIST = "FILES.json"
FILE_LIST_FORMAT = 1


class VersionNotPublished(ArtifactNotFound):
    """The prefix has no file list: never published, or still being uploaded."""


class CorruptVersion(ArtifactError):
    """A file list that cannot be read, or a file whose bytes do not match it."""


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class DirectoryVersion:
    """A published directory: its prefix and its files (name -> size, sha256)."""

    prefix: str
    files: dict[str, FileEntry]

    def key(self, name: str) -> str:
        if name not in self.files:
            raise ArtifactNotFound(f"{name} is not a file of {self.prefix}")
        return self.prefix + name

    def to_json(self) -> bytes:
        return json.dumps({"format": FILE_LIST_FORMAT, "files": {
            name: {"size": e.size, "sha256": e.sha256} for name, e in sorted(self.files.items())}},
            indent=2).encode() + b"\n"


def publish_directory(store: ArtifactStore, prefix: str, directory: Path) -> DirectoryVersion:
    """Upload every regular file of ``directory`` (flat or nested) under ``prefix``, the list last.

    A retry after a crash re-uploads only what is missing (keys are written once: an
    existing key of the same size and checksum counts as uploaded; one that differs is a
    CorruptVersion, since a version's bytes never change).
    """
    check_prefix(prefix)
    directory = Path(directory)
    files: dict[str, FileEntry] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        name = path.relative_to(directory).as_posix()
        if name == FILE_LIST:
            raise CorruptVersion(f"{directory} holds a file named {FILE_LIST}, which the store reserves")
        files[name] = FileEntry(path.stat().st_size, sha256_file(path))
    if not files:
        raise ArtifactError(f"{directory} has no files to publish")
    present = set(store.list_keys(prefix))
    if prefix + FILE_LIST in present:
        published = read_directory(store, prefix)
        if published.files != files:
            raise CorruptVersion(f"{prefix} is already published with other files; versions never change")
        return published
    for name, entry in files.items():
        if prefix + name not in present:
            store.put_file(check_key(prefix + name), directory / name)
    version = DirectoryVersion(prefix, files)
    store.put_bytes(prefix + FILE_LIST, version.to_json())
    return version


def read_directory(store: ArtifactStore, prefix: str) -> DirectoryVersion:
    """The published version at ``prefix``; VersionNotPublished if its file list is not there."""
    check_prefix(prefix)
    try:
        raw = store.read_bytes(prefix + FILE_LIST)
    except ArtifactNotFound:
        raise VersionNotPublished(f"{prefix} is not published in {store.url} (no {FILE_LIST})") from None
    try:
        data = json.loads(raw)
        if data.get("format") != FILE_LIST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FILE_LIST_FORMAT}")
        files = {str(name): FileEntry(int(e["size"]), str(e["sha256"])) for name, e in data["files"].items()}
        for name in files:
            check_key(prefix + name)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptVersion(f"{prefix}{FILE_LIST} in {store.url} is malformed: {exc}") from exc
    return DirectoryVersion(prefix, files)


def published_versions(store: ArtifactStore, parent: str) -> list[str]:
    """Prefixes directly under ``parent`` that have a file list, in key order."""
    check_prefix(parent)
    found = []
    for key in store.list_keys(parent):
        rest = key[len(parent):]
        head, _, tail = rest.partition("/")
        if tail == FILE_LIST:
            found.append(f"{parent}{head}/")
    return found


def delete_directory(store: ArtifactStore, prefix: str) -> int:
    """Delete a whole version: its file list first (readers stop seeing it), then its files."""
    check_prefix(prefix)
    keys = list(store.list_keys(prefix))
    listed = [k for k in keys if k == prefix + FILE_LIST]
    store.delete(listed)
    store.delete([k for k in keys if k not in listed])
    return len(keys)
