"""The metadata table of an index version: what each row's result shows, without SQL.

A similar-by-id answer from the neighbour lists (core/index/neighbours.py) still needs,
for each result image, its item and the fields the response shows (external id,
title, category, group, attributes, image key). This file holds them for every row of
the version, as SQL had them when the table was written, so the searcher can build
an answer without a metadata query (issue #14). SQL stays the source of truth: the
changes since :attr:`~core.index.manifest.IndexManifest.metadata_as_of` are caught by
the searcher's live set (service/searcher/live.py), and whatever it cannot vouch for
goes back to SQL.

``metadata.bin``, memory-mapped read-only by every serving process (one shared copy in
the page cache), little-endian::

    magic      8 bytes  b"LKMETA1\\0"
    count      uint64   rows (= the index's rows, in row order)
    item_ids   int64    [count]: the row's item, -1 if the image was not servable when read
    offsets    uint64   [count + 1]: each row's record is blob[offsets[r]:offsets[r + 1]]
    blob       bytes    records: a JSON array [external_id, title, category, group_key,
                        attributes_json, media_key] (``attributes_json`` is the stored JSON
                        text, so a result decoded from here serialises to the SQL path's bytes)

Written like the lists: before the version's SQL row is READY, the file by an atomic
rename, then the manifest naming it (with its checksum) rewritten atomically; a crash
in between leaves a version without a table, which serves through SQL.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import mmap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sqlalchemy import Connection

from core.atomic_files import replacing, sha256_file
from core.catalog.servable import BUILD_CHUNK, ImageMeta, servable_metadata
from core.db.types import utcnow
from core.index.manifest import IDS_FILE, METADATA_FILE, IndexManifest, IndexMismatchError

log = logging.getLogger(__name__)

MAGIC = b"LKMETA1\0"
_HEADER = 16


def _record(meta: ImageMeta) -> bytes:
    return json.dumps([meta.external_id, meta.title, meta.category, meta.group_key, meta.attributes_json,
                       meta.media_key], ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def write_metadata_table(path: Path, conn: Connection, image_ids: np.ndarray) -> None:
    """Write the table of ``image_ids`` (the index's rows, in order) to ``path`` atomically, from SQL."""
    n = len(image_ids)
    item_ids = np.full(n, -1, dtype="<i8")
    offsets = np.zeros(n + 1, dtype="<u8")
    with replacing(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        fh.write(MAGIC + np.uint64(n).astype("<u8").tobytes())
        fh.seek(_HEADER + 8 * n + 8 * (n + 1))  # the arrays are written last, once known
        written = 0
        for start in range(0, n, BUILD_CHUNK):
            chunk = image_ids[start:start + BUILD_CHUNK]
            found = {m.image_id: m for m in servable_metadata(conn, chunk.tolist())}
            for row, image_id in enumerate(chunk.tolist(), start=start):
                meta = found.get(image_id)
                if meta is not None:
                    record = _record(meta)
                    fh.write(record)
                    written += len(record)
                    item_ids[row] = meta.item_id
                offsets[row + 1] = written
        fh.seek(_HEADER)
        fh.write(item_ids.tobytes())
        fh.write(offsets.tobytes())
        fh.flush()


def add_metadata_table(directory: Path, conn: Connection) -> IndexManifest:
    """Read the metadata of the index at ``directory`` from SQL, write it, checksum it; the new manifest.

    ``metadata_as_of`` is taken *before* the first row is read: a change committed while
    the table is written is then newer than it, and the live set reads it again.
    The directory must not be served yet (see the module docstring).
    """
    directory = Path(directory)
    manifest = IndexManifest.read(directory)
    started = time.perf_counter()
    as_of = utcnow()
    image_ids = np.load(directory / IDS_FILE, allow_pickle=False)
    path = directory / METADATA_FILE
    write_metadata_table(path, conn, image_ids)
    updated = replace(manifest, metadata_checksum=sha256_file(path), metadata_as_of=as_of.isoformat(),
                      metadata_seconds=round(time.perf_counter() - started, 3))
    updated.write(directory)
    log.info("metadata table of %s: %d rows, %.1f MB in %.1fs", manifest.index_version, manifest.count,
             path.stat().st_size / 2**20, updated.metadata_seconds)
    return updated


class MetadataTable:
    """A version's table, memory-mapped read-only; :meth:`meta` decodes one row on demand."""

    def __init__(self, buffer: mmap.mmap, count: int, as_of: dt.datetime) -> None:
        self._buffer = buffer
        self.count = count
        self.as_of = as_of
        """When the table was read from SQL (its manifest's ``metadata_as_of``)."""
        self.item_ids = np.frombuffer(buffer, dtype="<i8", count=count, offset=_HEADER)
        self._offsets = np.frombuffer(buffer, dtype="<u8", count=count + 1, offset=_HEADER + 8 * count)
        self._blob = _HEADER + 16 * count + 8

    @classmethod
    def open(cls, directory: Path, manifest: IndexManifest, *,
             verify_checksum: bool = False) -> MetadataTable | None:
        """The table the manifest names; None if it names none (an older version)."""
        if not manifest.metadata_checksum:
            return None
        path = Path(directory) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"metadata table missing: {path}")
        if verify_checksum and (found := sha256_file(path)) != manifest.metadata_checksum:
            raise IndexMismatchError(f"checksum of {path.name}: expected {manifest.metadata_checksum}, "
                                     f"found {found}")
        with open(path, "rb") as fh:
            buffer = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        count = manifest.count
        if (len(buffer) < _HEADER + 16 * count + 8 or buffer[:8] != MAGIC
                or int(np.frombuffer(buffer, dtype="<u8", count=1, offset=8)[0]) != count):
            raise IndexMismatchError(f"{path.name}: not a metadata table of {count} rows")
        table = cls(buffer, count, dt.datetime.fromisoformat(manifest.metadata_as_of))
        if table._blob + int(table._offsets[-1]) != len(buffer):
            raise IndexMismatchError(f"{path.name}: truncated (records end past the file)")
        return table

    def meta(self, row: int, image_id: int) -> ImageMeta | None:
        """Row ``row``'s metadata as read at build time (None: not servable then); ``image_id`` is its id."""
        item_id = int(self.item_ids[row])
        if item_id < 0:
            return None
        start = self._blob + int(self._offsets[row])
        f = json.loads(self._buffer[start:self._blob + int(self._offsets[row + 1])])
        return ImageMeta(item_id, f[0], f[1], f[2], f[3], f[4], image_id, f[5])
