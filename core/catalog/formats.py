"""Readers for the three catalog formats; each yields rows and row errors in order.

**CSV** (UTF-8, an optional BOM, comma-separated, RFC 4180 quoting): a header row
that names ``external_id``; the other known columns are ``title``, ``category``,
``group``, ``attributes`` (a JSON object) and ``images`` (``|``-separated
references). Any other column becomes a string attribute (empty cells are left
out). A row's line is the physical line on which its record starts, so quoted
multi-line cells do not shift the numbers. Blank lines are skipped. A record that never
ends (an unclosed quote) is one bad row, and the lines after its first are read again
(:class:`_RecordLines`).

**JSONL**: one JSON object per line with the same keys (``images`` is a list, any
other key becomes an attribute with its JSON value). Blank lines are skipped.

**Folder**: every non-hidden file under the directory is one item with one image.
The category is the name of the folder the file is in (none for files directly
in the root); the external id is the file's path below the root without its
extension, with ``/`` replaced by ``-`` (``dress/123.jpg`` -> ``dress-123``,
``train/dress/123.jpg`` -> ``train-dress-123``), the title is the file stem.
Files are visited in sorted path order; a row's "line" is that 1-based ordinal.
Files that are not images are reported as row errors, not skipped silently.

File-level problems (missing file, no ``external_id`` column, a file that is not
UTF-8 text: a UTF-16/32 byte-order mark, or a CSV header that is not UTF-8 or holds
NUL) raise :class:`CatalogFormatError` before any row is produced. Past that point
any bytes make row errors, never an exception: a reader yields one item per record.
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from core.catalog.rows import (
    CatalogFormatError,
    CatalogRow,
    CatalogSource,
    ImageRef,
    ImportFormat,
    RowError,
)
from core.catalog.validate import KNOWN_FIELDS, make_row, split_known_fields
from core.text import encodes_as_utf8, is_safe_text

IMAGE_SEPARATOR = "|"

_WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
              b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
"""Byte-order marks of the encodings spreadsheets export as "Unicode text" (longest first)."""

_JSON_ERRORS = (ValueError, RecursionError)
"""What ``json.loads`` raises for bad input: JSONDecodeError is a ValueError, and so is an
integer over Python's digit limit; nesting deeper than the stack is a RecursionError."""


def open_source(path: Path, fmt: ImportFormat | str | None = None, *, uploaded: bool = False) -> CatalogSource:
    """Open ``path`` in format ``fmt`` (detected from the path when None).

    ``uploaded``: the file came through the API (core/import_uploads.py), so it has no
    folder of its own: a relative image reference is a row error saying so, not a path
    below wherever this host keeps the copy.
    """
    path = Path(path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a NUL in the path is a ValueError
        raise CatalogFormatError(f"{path} cannot be opened: {exc}") from exc
    if not exists:
        raise CatalogFormatError(f"{path} does not exist")
    fmt = ImportFormat.detect(path) if fmt is None else _format(fmt)
    if fmt is ImportFormat.FOLDER:
        if uploaded:
            raise CatalogFormatError("a folder cannot be uploaded: use csv or jsonl")
        return read_folder(path)
    if path.is_dir():
        raise CatalogFormatError(f"{path} is a directory; use the folder format for a folder of images")
    _check_not_wide(path)
    base_dir = None if uploaded else path.parent
    if fmt is ImportFormat.CSV:
        return read_csv(path, base_dir)
    return read_jsonl(path, base_dir)


def _format(value: ImportFormat | str) -> ImportFormat:
    try:
        return ImportFormat(value)
    except ValueError:
        raise CatalogFormatError(f"unknown catalog format {value!r}: use csv, jsonl or folder") from None


def _check_not_wide(path: Path) -> None:
    """Refuse UTF-16/32 text up front: read as UTF-8 every row would only be garbage."""
    with path.open("rb") as fh:
        start = fh.read(4)
    for bom, encoding in _WIDE_BOMS.items():
        if start.startswith(bom):
            raise CatalogFormatError(f"{path} is {encoding} text; catalog files must be UTF-8 "
                                     "(save or export it as UTF-8)")


def _count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


# ----------------------------------------------------------------------------- CSV
def read_csv(path: Path, base_dir: Path | None) -> CatalogSource:
    """Read a CSV catalog; the header is checked now, the rows lazily.

    ``base_dir`` is the catalog's folder, which relative image references are below
    (None: it has none, see :func:`open_source`).
    """
    fh = path.open(newline="", encoding="utf-8-sig", errors="surrogateescape")
    try:
        lines = _RecordLines(fh)
        reader = csv.reader(lines, strict=True)
        header = [name.strip() for name in next(reader, [])]
        _check_header(path, header)
        lines.done()
    except (CatalogFormatError, csv.Error) as exc:
        fh.close()
        if isinstance(exc, csv.Error):
            raise CatalogFormatError(f"{path}: unreadable CSV header: {exc}") from exc
        raise
    total = max(_count_lines(path) - 1, 0)
    return CatalogSource(rows=_csv_rows(fh, lines, reader, header, base_dir), total_hint=total, folder=base_dir)


def _check_header(path: Path, header: list[str]) -> None:
    if not header:
        raise CatalogFormatError(f"{path} is empty: expected a header row naming external_id")
    # Before the column checks, whose messages would only quote the garbage.
    if any(not is_safe_text(name) for name in header):
        raise CatalogFormatError(f"{path}: the header is not UTF-8 text (undecodable bytes or control characters: "
                                 "a binary file, or another encoding?)")
    if "external_id" not in header:
        raise CatalogFormatError(
            f"{path}: the header has no external_id column (found: {', '.join(header)}); "
            f"known columns are {', '.join(KNOWN_FIELDS)}"
        )
    seen: set[str] = set()
    for name in header:
        if not name:
            raise CatalogFormatError(f"{path}: the header has an empty column name")
        if name in seen:
            raise CatalogFormatError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)


class _RecordLines:
    """The CSV's physical lines, fed to ``csv.reader``, remembering those of the record being read.

    A record the parser cannot finish is one bad row on the line where it starts. When it
    ran over several lines (a quote opened and never closed runs on to the end of the file,
    or to the field-size limit), the lines after its first are handed to the parser again:
    the rows after a stray quote are read as rows, not swallowed into one field
    (docs/DECISIONS.md, "Media store and catalog import").
    """

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh
        self._again: deque[str] = deque()
        self._record: list[str] = []
        self.start = 1
        """The physical line number of the record being read."""

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        line = self._again.popleft() if self._again else next(self._fh)
        self._record.append(line)
        return line

    def done(self) -> int:
        """The record read is complete (or is refused as a whole): returns its last line's number."""
        last = self.start + max(len(self._record), 1) - 1
        self.start += len(self._record)
        self._record.clear()
        return last

    def reread(self) -> int:
        """The record read is broken: its first line is dropped and the others read again;
        returns the number of the last line the broken record reached."""
        last = self.start + max(len(self._record), 1) - 1
        self._again.extendleft(reversed(self._record[1:]))
        self.start += 1
        self._record.clear()
        return last


def _csv_rows(fh: IO[str], lines: _RecordLines, reader: "csv._reader", header: list[str],
              base_dir: Path | None) -> Iterator[CatalogRow | RowError]:
    with fh:
        while True:
            first = lines.start
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last = lines.reread()
                if last == first:
                    yield RowError(first, None, f"malformed CSV: {exc}")
                else:
                    yield RowError(first, None, f"malformed CSV: a quoted field starts on this line and is not "
                                   f"closed properly (at line {last}: {exc}); the lines after this one are read "
                                   "as rows of their own")
                continue
            last = lines.done()
            if not any(cell.strip() for cell in cells):
                continue
            yield _csv_record(first, last, header, cells, base_dir)


def _csv_record(line: int, last: int, header: list[str], cells: list[str],
                base_dir: Path | None) -> CatalogRow | RowError:
    record = dict(zip(header, cells))
    hint = record.get("external_id", "").strip() or None
    if len(cells) != len(header):
        spans = f" (the record runs on to line {last}: an unbalanced quote?)" if last > line else ""
        return RowError(line, hint, f"{len(cells)} fields, but the header has {len(header)} columns{spans}")
    if not all(encodes_as_utf8(cell) for cell in cells):
        return RowError(line, hint if hint and encodes_as_utf8(hint) else None, "not valid UTF-8")
    known, extras = split_known_fields(record)
    if known.get("attributes", "").strip():
        try:
            known["attributes"] = json.loads(known["attributes"])
        except _JSON_ERRORS as exc:
            return RowError(line, hint, f"attributes is not valid JSON: {_json_problem(exc)}")
    images = known.get("images")
    if images is not None:
        known["images"] = [part for part in images.split(IMAGE_SEPARATOR) if part.strip()]
    extras = {key: value.strip() for key, value in extras.items() if value.strip()}
    return make_row(line, known, base_dir=base_dir, extras=extras)


def _json_problem(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


# ----------------------------------------------------------------------------- JSONL
def read_jsonl(path: Path, base_dir: Path | None) -> CatalogSource:
    """Read a JSON-lines catalog (one object per line); ``base_dir`` as for :func:`read_csv`."""
    return CatalogSource(rows=_jsonl_rows(path, base_dir), total_hint=_count_lines(path), folder=base_dir)


def _jsonl_rows(path: Path, base_dir: Path | None) -> Iterator[CatalogRow | RowError]:
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield RowError(line, None, f"not valid UTF-8 (byte {exc.start + 1})")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except _JSON_ERRORS as exc:
                yield RowError(line, None, f"invalid JSON: {_json_problem(exc)}")
                continue
            if not isinstance(record, dict):
                yield RowError(line, None, f"expected a JSON object, got {type(record).__name__}")
                continue
            known, extras = split_known_fields(record)
            yield make_row(line, known, base_dir=base_dir, extras=extras)


# ----------------------------------------------------------------------------- folder
def read_folder(root: Path) -> CatalogSource:
    """Read a folder of images (sub-folder name = category)."""
    if not root.is_dir():
        raise CatalogFormatError(f"{root} is not a directory")
    files = _image_files(root)
    return CatalogSource(rows=_folder_rows(root, files), total_hint=len(files), folder=root)


def _image_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(directory, name) for name in filenames if not name.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _folder_rows(root: Path, files: list[Path]) -> Iterator[CatalogRow | RowError]:
    for ordinal, path in enumerate(files, start=1):
        rel = path.relative_to(root)
        category = rel.parts[-2] if len(rel.parts) > 1 else None
        external_id = "-".join([*rel.parts[:-1], rel.stem or rel.name])
        fields = {"external_id": external_id, "title": rel.stem, "category": category}
        yield make_row(ordinal, fields, base_dir=root, image_refs=[ImageRef(uri=rel.as_posix(), path=path)])
