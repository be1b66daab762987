"""Import a catalog source in one call (the entry points for the CLI, the worker and the API)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from core.catalog.formats import open_source
from core.catalog.rows import ImportFormat, ImportReport, RowError
from core.catalog.sample import DEFAULT_DATASET_DIR, Split, fashion_mnist_source
from core.catalog.upsert import DEFAULT_CHUNK_SIZE, Progress, import_rows
from core.catalog.validate import NO_UPLOAD_FOLDER
from core.media import MediaStore


def import_catalog(
    path: Path,
    *,
    sessions: sessionmaker[Session],
    store: MediaStore,
    fmt: ImportFormat | str | None = None,
    delete_missing: bool = False,
    progress: Progress | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    import_roots: Iterable[Path] = (),
    uploaded: bool = False,
) -> ImportReport:
    """Read ``path`` (format detected when ``fmt`` is None) and upsert it into the catalog.

    Image files are read from the catalog's own folder and ``import_roots``
    (``Settings.import_roots``) only; a row naming any other file is rejected. An
    ``uploaded`` catalog (core/import_uploads.py) has no folder of its own: only the roots.

    Raises :class:`~core.catalog.rows.CatalogFormatError` when the source cannot be
    read at all (an unknown ``fmt`` name included); bad rows, whatever their bytes, are
    reported in the returned report instead.
    """
    source = open_source(path, fmt, uploaded=uploaded)
    return import_rows(source.rows, sessions=sessions, store=store, progress=progress,
                       delete_missing=delete_missing, chunk_size=chunk_size,
                       roots=source.import_roots(import_roots))


def host_bound_rows(path: Path, fmt: ImportFormat | str, *, max_rows: int, limit: int = 5) -> list[RowError]:
    """Up to ``limit`` of the first ``max_rows`` rows of an uploaded catalog whose images
    name a relative path: the form of reference that cannot work when the worker is
    another host (:data:`~core.catalog.validate.NO_UPLOAD_FOLDER`).

    For the API to refuse such a file at request time; only a prefix is read, so the
    check costs milliseconds whatever the file's size (later rows with the same problem
    are rejected, with the same reason, by the import). Raises CatalogFormatError as
    :func:`~core.catalog.formats.open_source` does.
    """
    rows = open_source(path, fmt, uploaded=True).rows
    try:
        bad = (r for r in islice(rows, max_rows) if isinstance(r, RowError) and NO_UPLOAD_FOLDER in r.reason)
        return list(islice(bad, limit))
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # the reader's file handle


def import_fashion_mnist(
    *,
    sessions: sessionmaker[Session],
    store: MediaStore,
    dataset_dir: Path = DEFAULT_DATASET_DIR,
    split: Split = Split.TRAIN,
    limit: int | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Build (or refresh) the Fashion-MNIST sample catalog; see :mod:`core.catalog.sample`."""
    source = fashion_mnist_source(dataset_dir, split=split, limit=limit)
    return import_rows(source.rows, sessions=sessions, store=store, progress=progress)
