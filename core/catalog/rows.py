"""The vocabulary of a catalog import: validated rows, row errors, and the report.

Every source format (CSV, JSONL, a folder, the Fashion-MNIST sample) is turned into
a stream of :class:`CatalogRow` (valid so far) and :class:`RowError` (rejected, with
the line and the reason); :mod:`core.catalog.upsert` writes the rows.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.media import ImportRoots
from core.text import is_safe_text, safe_text

MAX_EXTERNAL_ID = 255
MAX_TITLE = 1000
MAX_CATEGORY = 255
MAX_GROUP = 255
MAX_SOURCE_URI = 2000
MAX_IMAGES_PER_ITEM = 50
"""More photos than this for one product is a broken row, not a product."""
class ImportFormat(str, enum.Enum):
    CSV = "csv"
    JSONL = "jsonl"
    FOLDER = "folder"

    @classmethod
    def detect(cls, path: Path) -> ImportFormat:
        """Guess the format from the path: a directory, ``.csv``, or ``.jsonl``/``.ndjson``."""
        if path.is_dir():
            return cls.FOLDER
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return cls.CSV
        if suffix in {".jsonl", ".ndjson"}:
            return cls.JSONL
        raise CatalogFormatError(
            f"cannot tell the format of {path} from its name: pass the format explicitly (csv, jsonl, folder)"
        )


class CatalogFormatError(ValueError):
    """The source as a whole cannot be read (missing file, no ``external_id`` column, ...)."""

    def __init__(self, message: str) -> None:
        # The message quotes the source (its name, its header), which may be any bytes, and
        # it is stored on the job: made safe here, once, for every place that raises one.
        super().__init__(safe_text(message))


@dataclass(frozen=True)
class ImageRef:
    """One image of a row: where it came from, and either a local file or the bytes."""

    uri: str
    """As written in the source; recorded as the image's ``source_uri``."""
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)


@dataclass
class CatalogRow:
    """One item as the source describes it, after field validation."""

    line: int
    external_id: str
    title: str = ""
    category: str | None = None
    group: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    images: list[ImageRef] = field(default_factory=list)


@dataclass(frozen=True)
class RowError:
    """A rejected row: ``line`` is 1-based in the file (for a folder: the file's ordinal)."""

    line: int
    external_id: str | None
    """None when the row had no external id that can be stored and shown as it is."""
    reason: str

    def __post_init__(self) -> None:
        # Reasons quote the input, and row errors are stored in job results (JSON) and
        # printed: whatever bytes a source holds, what is kept must be safe text. An id
        # that is not safe text was not readable; None also keeps it from claiming an id
        # (its escaped form could be a real, different item's id).
        object.__setattr__(self, "reason", safe_text(self.reason))
        if self.external_id is not None and not is_safe_text(self.external_id):
            object.__setattr__(self, "external_id", None)

    def __str__(self) -> str:
        who = f" ({self.external_id})" if self.external_id else ""
        return f"line {self.line}{who}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did. ``new_image_ids`` are the images that need embedding."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    """Items soft-deleted because the source no longer lists them (``delete_missing``)."""
    errors: list[RowError] = field(default_factory=list)
    new_image_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Things about the import as a whole that the user should know (not row errors)."""
    seconds: float = 0.0

    @property
    def imported(self) -> int:
        """Rows that are now in the catalog as the source describes them."""
        return self.created + self.updated + self.unchanged

    @property
    def rows(self) -> int:
        return self.imported + len(self.errors)

    @property
    def items_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
                f"{self.deleted} deleted, {len(self.errors)} rejected; "
                f"{len(self.new_image_ids)} images to embed; {self.seconds:.1f}s")


@dataclass
class CatalogSource:
    """A readable source: its rows, in order, and an estimate of how many there are."""

    rows: Iterator[CatalogRow | RowError]
    total_hint: int | None = None
    """Roughly how many rows to expect (for progress bars); None if unknown."""
    folder: Path | None = None
    """The catalog's own folder (a file's directory, or the folder imported), where its rows'
    images may be read from; None for sources that carry their image bytes."""

    def import_roots(self, configured: Iterable[Path]) -> ImportRoots:
        """Where this source's images may be read: its own folder and the ``configured`` roots
        (``Settings.import_roots``; docs/CONFIG.md, "Where an import may read images")."""
        return ImportRoots([*([self.folder] if self.folder is not None else []), *configured])
