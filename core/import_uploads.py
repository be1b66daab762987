"""Catalog files uploaded through ``POST /api/v1/imports``: in the artifact store until their job ends.

The API host writes the upload to the store (create-only, under a key of its own:
``imports/<UTC time>-<random>.<format>``) with its size and sha256 *before* the job
row commits, and the job carries that :class:`ImportUpload`, never a host path. The
worker that takes the job fetches the key through its host's cache
(core/artifacts/cache.py), checks the bytes against the recorded sha256 and imports
the local copy. With the local-directory store (the default) the key is the file
``<artifacts>/imports/...`` the API always wrote, and the worker reads it in place.

Retention: an upload is deleted once the job that reads it has finished (succeeded,
failed or cancelled), by that job's worker right after it settled and, as a safety
net, by :func:`prune_uploads` (beat's RECOVER_JOBS). A key no job refers to (the
API died, or the database refused the job, between the upload and the commit) is
deleted once it is :data:`ORPHAN_SECONDS` old, the time in its name. One key per
upload, not a content address: two jobs importing the same bytes never share a key,
so deleting one job's upload can never pull it from under the other.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.artifacts import ArtifactCache, ArtifactError, ArtifactNotFound, ArtifactStore, CorruptVersion
from core.artifacts.store import check_key
from core.artifacts.versions import FileEntry
from core.atomic_files import sha256_file
from core.db import Job, JobKind, session_scope

log = logging.getLogger(__name__)

UPLOADS_PREFIX = "imports/"
ORPHAN_SECONDS = 3600
"""A key without a job this old is an orphan: the upload-to-commit gap is milliseconds."""
_STAMP = "%Y%m%dT%H%M%SZ"
_KEY = re.compile(r"^imports/(\d{8}T\d{6}Z)-[0-9a-f]{16}\.[a-z]+$")


class UploadCorrupt(ArtifactError):
    """The fetched bytes do not match the size and sha256 recorded when the file was uploaded."""


@dataclass(frozen=True)
class ImportUpload:
    """An uploaded catalog file in the store: its key, and what its bytes must hash to."""

    key: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, value: Any) -> ImportUpload:
        """The upload a task's (JSON) arguments describe; ValueError if they are not one."""
        if not isinstance(value, dict) or not isinstance(value.get("key"), str) \
                or not isinstance(value.get("sha256"), str) or not isinstance(value.get("size"), int):
            raise ValueError(f"not an import upload (key, sha256, size): {value!r}")
        key = check_key(value["key"])
        if not key.startswith(UPLOADS_PREFIX):
            raise ValueError(f"import upload key {key!r} is not under {UPLOADS_PREFIX}")
        return cls(key, value["sha256"], value["size"])


def upload_key(fmt: str, now: datetime | None = None) -> str:
    """A fresh key for one upload: its UTC time (for the orphan rule) and 64 random bits."""
    stamp = (now or datetime.now(UTC)).strftime(_STAMP)
    return check_key(f"{UPLOADS_PREFIX}{stamp}-{secrets.token_hex(8)}.{fmt}")


def save_upload(store: ArtifactStore, source: Path, fmt: str) -> ImportUpload:
    """Put ``source`` in ``store`` under a new key (create-only) and return what the job needs.

    Raises :class:`~core.artifacts.StoreUnavailable` when the store cannot be reached:
    then nothing was stored under the key (an object appears whole or not at all).
    """
    upload = ImportUpload(upload_key(fmt), sha256_file(source), source.stat().st_size)
    store.put_file(upload.key, source)
    return upload


@contextmanager
def fetched_upload(cache: ArtifactCache, upload: ImportUpload) -> Iterator[Path]:
    """The upload as a local file on this host (pinned in the cache while in use), its bytes checked.

    A download is checked by the cache against ``upload``'s size and sha256 (a mismatch
    is deleted, never kept); the local store's file is read in place and hashed here.
    Raises StoreUnavailable (store down), ArtifactNotFound, or :class:`UploadCorrupt`.
    """
    entry = FileEntry(upload.size, upload.sha256)
    try:
        cached = cache.fetch(upload.key, entry)
    except FileNotFoundError:  # the local store checks the size of its own file, which is gone
        raise ArtifactNotFound(f"{upload.key} is not in {cache.store.url}") from None
    except CorruptVersion as exc:
        raise UploadCorrupt(str(exc)) from exc
    with cached:
        if not cached.pinned and sha256_file(cached.path) != upload.sha256:  # the local store's own file
            raise UploadCorrupt(f"{upload.key}: its sha256 is not the one recorded at upload")
        yield cached.path


def delete_upload(cache: ArtifactCache, upload: ImportUpload) -> bool:
    """Delete a finished job's upload from the store and from this host's cache; False (logged)
    if the store cannot do it now (:func:`prune_uploads` will)."""
    if cache.store.local_path(upload.key) is None:  # a local store's file is its own "cache"
        cache.discard(upload.key)
    try:
        cache.store.delete([upload.key])
    except ArtifactError as exc:
        log.warning("could not delete the import upload %s now (the next prune will): %s", upload.key, exc)
        return False
    return True


def prune_uploads(store: ArtifactStore, sessions: sessionmaker[Session], *, now: datetime | None = None,
                  orphan_seconds: float = ORPHAN_SECONDS) -> list[str]:
    """Delete the uploads whose job has finished, and orphans older than ``orphan_seconds``.

    Keys not named by :func:`upload_key` (files an older version left in ``imports/``)
    are left alone. Returns the deleted keys; StoreUnavailable if the store is down.
    """
    keys = [k for k in store.list_keys(UPLOADS_PREFIX) if _KEY.match(k)]
    if not keys:
        return []
    with session_scope(sessions) as s:
        jobs = s.execute(select(Job.status, Job.params).where(Job.kind == JobKind.IMPORT)).all()
    in_use: set[str] = set()
    finished: set[str] = set()
    for status, params in jobs:
        key = ((params or {}).get("upload") or {}).get("key") if isinstance(params, dict) else None
        if isinstance(key, str):
            (finished if status.finished else in_use).add(key)
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=orphan_seconds)
    doomed = [k for k in keys if k not in in_use and (k in finished or _stamp(k) < cutoff)]
    if doomed:
        store.delete(doomed)
        log.info("deleted %d import uploads of finished jobs (or of none)", len(doomed))
    return doomed


def _stamp(key: str) -> datetime:
    match = _KEY.match(key)
    assert match is not None  # prune_uploads only passes keys that match
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)
