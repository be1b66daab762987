"""A zip archive of a catalog and its images: the upload that carries its own image files.

An uploaded CSV or JSONL has no folder on any host (core/import_uploads.py), so its
images must already be on the worker host. A zip carries them: exactly one catalog
file (``.csv``, ``.jsonl`` or ``.ndjson``) at the top level, and image files anywhere
below, which the catalog names by paths relative to the archive's root
(``images/123.jpg``). The worker extracts it into a temporary folder of its own and
imports the catalog from there, that folder being the catalog's folder (its import
root), so the rows can read the archive's files and nothing else of the host.

Checked before anything is extracted (:func:`check_archive`, also at request time):
the file is a zip, member names are plain relative paths (no ``/``-rooted names, no
``..``, no backslashes or drive letters), at most :data:`MAX_MEMBERS` members and
:data:`MAX_UNPACKED_BYTES` declared in all. Python's zip reader never returns more
than a member's declared size and checks its CRC, so a "bomb" cannot exceed what was
declared; zip symbolic links are extracted as small regular files, never as links.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from core.catalog.rows import CatalogFormatError, ImportFormat

ARCHIVE_FORMAT = "zip"
"""The ``format`` of such an upload, in the API's form field and the import job's arguments."""
ARCHIVE_SUFFIX = ".zip"
MAX_MEMBERS = 200_000
MAX_UNPACKED_BYTES = 8 * 1024 * 1024 * 1024
"""8 GiB unpacked: a 512 MiB zip of images is compressed little (they are JPEG/PNG already)."""
_CATALOG_SUFFIXES = {".csv": ImportFormat.CSV, ".jsonl": ImportFormat.JSONL, ".ndjson": ImportFormat.JSONL}


@dataclass(frozen=True)
class ArchiveLayout:
    """What :func:`check_archive` found: the catalog member and its format."""

    catalog: str
    format: ImportFormat


def check_archive(path: Path) -> ArchiveLayout:
    """The layout of the zip at ``path``; CatalogFormatError saying what is wrong otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CatalogFormatError(f"the upload is not a readable zip archive: {exc}") from None
    if len(members) > MAX_MEMBERS:
        raise CatalogFormatError(f"the archive has {len(members):,} members, the limit is {MAX_MEMBERS:,}")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise CatalogFormatError(f"the archive unpacks to {unpacked:,} bytes, the limit is {MAX_UNPACKED_BYTES:,}")
    for member in members:
        _check_name(member.filename)
    catalogs = [m.filename for m in members if not m.is_dir() and "/" not in m.filename
                and PurePosixPath(m.filename).suffix.lower() in _CATALOG_SUFFIXES]
    if len(catalogs) != 1:
        found = ", ".join(sorted(catalogs)) or "none"
        raise CatalogFormatError("the archive must hold exactly one catalog file (.csv, .jsonl or .ndjson) at "
                                 f"its top level, beside the images; found {found}")
    return ArchiveLayout(catalogs[0], _CATALOG_SUFFIXES[PurePosixPath(catalogs[0]).suffix.lower()])


def _check_name(name: str) -> None:
    parts = PurePosixPath(name).parts
    if (not parts or name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts
            or (len(parts[0]) == 2 and parts[0][1] == ":")):
        raise CatalogFormatError(f"the archive member {name!r} is not a plain relative path")


def extract_archive(path: Path, dest: Path) -> tuple[Path, ImportFormat]:
    """Check the zip at ``path`` and unpack it into the empty folder ``dest``; (catalog path, format)."""
    layout = check_archive(path)
    root = dest.resolve()
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            target = root.joinpath(*PurePosixPath(member.filename).parts)
            if not target.resolve().is_relative_to(root):  # _check_name already refused it: a second lock
                raise CatalogFormatError(f"the archive member {member.filename!r} is not a plain relative path")
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "xb") as out:  # x: never over another member
                    shutil.copyfileobj(source, out, 1 << 20)
            except (FileExistsError, NotADirectoryError):
                raise CatalogFormatError(f"the archive member {member.filename!r} collides with another") from None
            except zipfile.BadZipFile as exc:  # a CRC or size that does not match
                raise CatalogFormatError(f"the archive member {member.filename!r} is damaged: {exc}") from None
    return root / layout.catalog, layout.format
