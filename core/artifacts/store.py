"""Where artifacts live: one small interface, a local directory or an S3 bucket behind it.

Artifacts are media, model checkpoints, training runs and index versions. Each is
named by a *key*, a relative POSIX path such as ``indexes/v-20261203-1/index.ann``.
Keys are written once and never overwritten (a new index is a new version, a new
checkpoint a new model version), so a reader on any host that sees a key sees its
final bytes: that is what lets hosts share nothing but the store (docs/SCALING.md).

:class:`LocalStore` is the embedded default (``<home>/artifacts``); :class:`core.artifacts.s3.S3Store`
puts the same keys in a bucket. Both raise the errors below, so callers handle one set.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from core.atomic_files import creating, replacing

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
MAX_KEY_LENGTH = 1024
"""S3's own limit on a key's length in bytes; the prefix counts too, so keys stay well under it."""


class ArtifactError(Exception):
    """Base of the store's errors; the message names the key and the store."""


class BadKey(ArtifactError, ValueError):
    """A key that is not a clean relative path (``..``, a leading ``/``, odd characters)."""


class ArtifactNotFound(ArtifactError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ArtifactExists(ArtifactError, FileExistsError):
    """A write to a key that already exists: keys are written once (module docstring)."""


class StoreUnavailable(ArtifactError, ConnectionError):
    """The store cannot be reached (network, endpoint down, credentials refused)."""


def check_key(key: str) -> str:
    """``key`` if it is a clean relative path of safe segments, else BadKey naming it."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise BadKey(f"artifact key must be 1..{MAX_KEY_LENGTH} characters, got {key!r}")
    for segment in key.split("/"):
        if not _SEGMENT.match(segment):
            raise BadKey(f"artifact key {key!r}: segment {segment!r} is not a plain file or folder name")
    return key


def check_prefix(prefix: str) -> str:
    """A key prefix: empty, or a clean key followed by ``/``."""
    if prefix:
        check_key(prefix.rstrip("/"))
        if not prefix.endswith("/"):
            raise BadKey(f"artifact prefix {prefix!r} must end with '/'")
    return prefix


class ArtifactStore(Protocol):
    """What the project needs of a store; every method takes checked keys."""

    @property
    def url(self) -> str:
        """Where the store is, for logs and errors (never credentials)."""

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` as ``key``; ArtifactExists if ``key`` exists (nothing is overwritten)."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Same as put_file for bytes in memory."""

    def get_file(self, key: str, dest: Path) -> None:
        """Download ``key`` to ``dest``, atomically (a crash leaves no partial ``dest``)."""

    def read_bytes(self, key: str) -> bytes:
        """The whole object; for small ones (manifests)."""

    def exists(self, key: str) -> bool: ...

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (``""`` for all), in lexicographic order."""

    def delete(self, keys: list[str]) -> None:
        """Remove the keys; a missing one is not an error (retention may run twice)."""

    def local_path(self, key: str) -> Path | None:
        """A path a reader may open directly (the local store), or None (it must download)."""

    def prepare(self) -> None:
        """Make a fresh store usable: its folder, or its bucket (MinIO, SeaweedFS) if missing."""


class LocalStore:
    """Keys as files under one directory: the embedded default, no copy needed to read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, source: Path) -> None:
        try:
            with creating(self._path(key), fsync=True) as tmp:
                shutil.copyfile(source, tmp)
        except FileExistsError:  # create-only: an earlier or concurrent writer of the key keeps its bytes
            raise ArtifactExists(f"{key} already exists in {self.url}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            with creating(self._path(key), fsync=True) as tmp:
                tmp.write_bytes(data)
        except FileExistsError:
            raise ArtifactExists(f"{key} already exists in {self.url}") from None

    def get_file(self, key: str, dest: Path) -> None:
        source = self._path(key)
        with replacing(Path(dest)) as tmp:
            try:
                shutil.copyfile(source, tmp)
            except FileNotFoundError:
                raise ArtifactNotFound(f"{key} is not in {self.url}") from None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactNotFound(f"{key} is not in {self.url}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return iter(())
        keys = (p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())
        # Temp files of writes in flight start with a dot: they are not keys (yet).
        return iter(sorted(k for k in keys if not any(s.startswith(".") for s in k.split("/"))))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
