"""A read-through cache of store objects on one host: bounded, least recently used first out.

Every host keeps the objects it reads (index files it memory-maps, checkpoints,
images) under ``<cache_dir>/objects/<key>``. Several processes of a host (gunicorn
workers, Celery workers) share one cache safely:

- **Filling**: a per-key ``flock`` makes one process download a key while the others
  wait and then find it; the download lands under a temporary name and is renamed in
  only once its size and sha256 match the version's file list (core.artifacts.versions).
- **Pinning**: a reader holds a shared ``flock`` on the cached file for as long as it
  uses it (a served index version: as long as it is served). Eviction takes the key
  lock and an exclusive lock on the file without waiting and skips what it cannot get,
  so it never removes a file somebody maps.
- **Accounting**: a small SQLite table (size, last use per key) in the cache folder
  (one connection kept per thread, commits not fsynced),
  so eviction does not walk a folder of a million images. A process checks the bound
  once it has added ``EVICT_CHECK_FRACTION`` of it since its last check, not after every
  object (an import of 70,000 images would sum the table 70,000 times), so the cache
  may exceed its bound by that fraction per process between checks.

Objects are immutable (keys are written once), so a hit is never stale and never
contacts the store: a host keeps serving what it has cached while the store is down.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.artifacts.store import ArtifactStore, check_key
from core.artifacts.versions import CorruptVersion, DirectoryVersion, FileEntry
from core.atomic_files import replacing, sha256_file

log = logging.getLogger(__name__)

EVICT_CHECK_FRACTION = 0.01
"""Bytes a process adds, as a fraction of the bound, before it checks the bound again."""
_SCHEMA = "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used REAL NOT NULL)"


class CachedFile:
    """A cached object held open with a shared lock: eviction leaves it alone until ``close``."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path, self._fd = path, fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases its flock
            self._fd = None

    @property
    def pinned(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> CachedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PinnedVersion:
    """Every file of one directory version, cached and pinned; ``paths[name]`` to open them."""

    def __init__(self, version: DirectoryVersion, files: dict[str, CachedFile]) -> None:
        self.version, self.files = version, files

    @property
    def paths(self) -> dict[str, Path]:
        return {name: f.path for name, f in self.files.items()}

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def __enter__(self) -> PinnedVersion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArtifactCache:
    """The read-through cache in front of ``store`` (a pass-through for a local store)."""

    def __init__(self, store: ArtifactStore, root: Path, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.store, self.root, self.max_bytes = store, Path(root), max_bytes
        self.objects, self._locks = self.root / "objects", self.root / "locks"
        self._unchecked_bytes = 0  # added by this object since its last eviction check
        self._local = threading.local()  # this thread's accounting connection (_db)
        self.objects.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)

    # ------------------------------------------------------------------ reading
    def fetch(self, key: str, entry: FileEntry | None = None) -> CachedFile:
        """``key`` as a local file, pinned; downloaded (and checked against ``entry``) if needed."""
        direct = self.store.local_path(check_key(key))
        if direct is not None:  # the local store: its files are the cache, nothing to copy
            if entry is not None and direct.stat().st_size != entry.size:
                raise CorruptVersion(f"{key}: {direct.stat().st_size} bytes, the file list says {entry.size}")
            return CachedFile(direct, None)
        path = self.objects / key
        with self._key_lock(key):
            downloaded = False
            if not path.is_file():
                self.store.get_file(key, path)
                if entry is not None:
                    self._verify(key, path, entry)
                downloaded = True
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = path.stat().st_size
            self._used(key, size)
        if downloaded:
            self._added(size)
        return CachedFile(path, fd)

    def fetch_version(self, version: DirectoryVersion) -> PinnedVersion:
        """Every file of ``version``, each checked against its list; all pinned or none."""
        files: dict[str, CachedFile] = {}
        try:
            for name, entry in sorted(version.files.items()):
                files[name] = self.fetch(version.key(name), entry)
        except BaseException:
            for f in files.values():
                f.close()
            raise
        return PinnedVersion(version, files)

    @contextmanager
    def path(self, key: str, entry: FileEntry | None = None) -> Iterator[Path]:
        """``with cache.path(key) as p:`` for a short read (a checkpoint load), pinned meanwhile."""
        with self.fetch(key, entry) as cached:
            yield cached.path

    def keep(self, key: str, data: bytes) -> Path:
        """Keep a local copy of bytes this host just wrote to the store (no download later)."""
        path = self.objects / check_key(key)
        with self._key_lock(key):
            if not path.is_file() or path.stat().st_size != len(data):
                with replacing(path) as tmp:
                    tmp.write_bytes(data)
            self._used(key, len(data))
        self._added(len(data))
        return path

    # ------------------------------------------------------------------ size
    def keys(self) -> list[str]:
        """The keys this host has cached, least recently used first."""
        with self._db() as db:
            return [str(k) for (k,) in db.execute("SELECT key FROM entries ORDER BY last_used")]

    def size(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def _added(self, size: int) -> None:
        self._unchecked_bytes += size
        if self._unchecked_bytes >= max(1, int(self.max_bytes * EVICT_CHECK_FRACTION)):
            self.evict()

    def evict(self) -> list[str]:
        """Remove least recently used, unpinned objects until the cache fits ``max_bytes``."""
        self._unchecked_bytes = 0
        removed: list[str] = []
        with self._db() as db:
            total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
            if total <= self.max_bytes:
                return removed
            rows = db.execute("SELECT key, size FROM entries ORDER BY last_used").fetchall()
        for key, size in rows:
            if total <= self.max_bytes:
                break
            if self._try_remove(key):
                removed.append(key)
                total -= int(size)
        if total > self.max_bytes:
            log.warning("artifact cache %s holds %d bytes over its %d: the rest is pinned (in use)",
                        self.root, total - self.max_bytes, self.max_bytes)
        return removed

    def discard(self, key: str) -> bool:
        """Remove ``key``'s copy now (it will not be read again here) unless it is in use; True if gone."""
        return self._try_remove(check_key(key))

    def _try_remove(self, key: str) -> bool:
        lock_fd = os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # being filled or opened: skip
            except BlockingIOError:
                return False
            path = self.objects / key
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # removed by hand or by another host process: forget it
                self._forget(key)
                return True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # pinned by a reader: skip
            except BlockingIOError:
                return False
            finally:
                os.close(fd)
            path.unlink(missing_ok=True)
            self._forget(key)
            return True
        finally:
            os.close(lock_fd)

    # ------------------------------------------------------------------ plumbing
    def _verify(self, key: str, path: Path, entry: FileEntry) -> None:
        size, digest = path.stat().st_size, sha256_file(path)
        if size != entry.size or digest != entry.sha256:
            path.unlink(missing_ok=True)
            raise CorruptVersion(f"{key} from {self.store.url} does not match its file list "
                                 f"({size} bytes, sha256 {digest[:12]}...; expected {entry.size} bytes, "
                                 f"{entry.sha256[:12]}...)")

    def _lock_path(self, key: str) -> Path:
        return self._locks / (hashlib.sha1(key.encode()).hexdigest() + ".lock")

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        fd = os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _used(self, key: str, size: int) -> None:
        with self._db() as db:
            db.execute("INSERT INTO entries (key, size, last_used) VALUES (?, ?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET last_used = excluded.last_used, size = excluded.size",
                       (key, size, time.time()))

    def _forget(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM entries WHERE key = ?", (key,))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread and process, kept: opening one per object read and closing
        # it (a WAL checkpoint, fsyncs) cost ~20 ms per image on a busy disk, more than the GET.
        # A forked child (Celery prefork, gunicorn) must not use its parent's: hence the pid.
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.root / "cache.sqlite", timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # The table is an index of the objects folder, not the only record of anything:
            # after a power cut it may lose its last uses, never an object (docs/DECISIONS.md).
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        yield db
