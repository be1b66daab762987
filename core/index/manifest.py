"""The manifest that makes an index directory describe itself.

Every index directory holds ``manifest.json`` next to ``index.ann`` and ``ids.npy``.
A loader compares it with what the caller expects (model version, dimension,
metric) and refuses a mismatch loudly: an index queried with vectors from another
model returns plausible-looking nonsense, which is far worse than an error.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.atomic_files import replacing

FORMAT_VERSION = 1
"""Layout of an index directory; bump it when files or manifest fields change meaning."""

MANIFEST_FILE = "manifest.json"
ANNOY_FILE = "index.ann"
IDS_FILE = "ids.npy"
NEIGHBOURS_FILE = "neighbours.npy"
"""int32 [count, neighbours_k]: the rows nearest each row, best first (core/index/neighbours.py)."""
NEIGHBOUR_DISTANCES_FILE = "neighbour_distances.npy"
"""float32 [count, neighbours_k]: their distances, as Annoy reports them."""
METADATA_FILE = "metadata.bin"
"""What each row's result shows (item, title, image key...), read from SQL at build (core/index/metadata_table.py)."""


class Metric(str, enum.Enum):
    """Annoy's distance names; the value is what ``AnnoyIndex(dim, metric)`` takes."""

    EUCLIDEAN = "euclidean"
    ANGULAR = "angular"
    DOT = "dot"


class IndexMismatchError(ValueError):
    """An index directory is not what the caller expects, or is not intact.

    The message names the field, the expected value and the value found.
    """


class ManifestError(ValueError):
    """``manifest.json`` exists but cannot be parsed into a manifest."""


@dataclass(frozen=True)
class IndexManifest:
    """What an index directory contains and how it was built."""

    format_version: int
    index_version: str
    model_version: str
    metric: Metric
    dim: int
    n_trees: int
    count: int
    built_at: str
    """ISO 8601 UTC timestamp of the end of the build."""
    build_seconds: float
    checksum: str
    """sha256 hex digest of ``index.ann``."""
    ids_checksum: str = ""
    """sha256 hex digest of ``ids.npy`` (the row -> external id map)."""
    neighbours_k: int = 0
    """Length of each precomputed neighbour list; 0: the version has none (older, or disabled)."""
    neighbours_method: str = ""
    """How the lists were computed (``exact`` or ``annoy``; core.index.neighbours.NeighbourMethod)."""
    neighbours_checksum: str = ""
    """sha256 hex digest of ``neighbours.npy``."""
    neighbour_distances_checksum: str = ""
    """sha256 hex digest of ``neighbour_distances.npy``."""
    neighbours_recall: float = -1.0
    """recall@10 of the lists against exact search on a fixed sample; -1 when there are no lists."""
    neighbours_seconds: float = 0.0
    """Wall time spent computing and writing the lists."""
    metadata_checksum: str = ""
    """sha256 hex digest of ``metadata.bin``; empty: the version has no metadata table."""
    metadata_as_of: str = ""
    """ISO 8601 UTC time the table was read from SQL: changes after it are the live set's."""
    metadata_seconds: float = 0.0
    """Wall time spent reading and writing the table."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metric"] = self.metric.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        """Parse a manifest; an unknown ``format_version`` is refused before anything else."""
        if not isinstance(data, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
        found = data.get("format_version")
        if found != FORMAT_VERSION:
            raise IndexMismatchError(
                f"format_version: expected {FORMAT_VERSION}, found {found!r} "
                "(index written by an incompatible version)"
            )
        try:
            return cls(
                format_version=int(data["format_version"]),
                index_version=str(data["index_version"]),
                model_version=str(data["model_version"]),
                metric=Metric(data["metric"]),
                dim=int(data["dim"]),
                n_trees=int(data["n_trees"]),
                count=int(data["count"]),
                built_at=str(data["built_at"]),
                build_seconds=float(data["build_seconds"]),
                checksum=str(data["checksum"]),
                ids_checksum=str(data.get("ids_checksum", "")),
                # absent in versions built before neighbour lists existed: they load without
                neighbours_k=int(data.get("neighbours_k", 0)),
                neighbours_method=str(data.get("neighbours_method", "")),
                neighbours_checksum=str(data.get("neighbours_checksum", "")),
                neighbour_distances_checksum=str(data.get("neighbour_distances_checksum", "")),
                neighbours_recall=float(data.get("neighbours_recall", -1.0)),
                neighbours_seconds=float(data.get("neighbours_seconds", 0.0)),
                metadata_checksum=str(data.get("metadata_checksum", "")),
                metadata_as_of=str(data.get("metadata_as_of", "")),
                metadata_seconds=float(data.get("metadata_seconds", 0.0)),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest is missing the field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest has a malformed field: {exc}") from exc

    @classmethod
    def read(cls, directory: Path) -> IndexManifest:
        """Read ``<directory>/manifest.json``; FileNotFoundError names the missing path."""
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"index manifest not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def write(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory`` via a temp name, fsynced, then renamed."""
        path = Path(directory) / MANIFEST_FILE
        with replacing(path, fsync=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        return path

    def check(
        self,
        *,
        model_version: str | None = None,
        dim: int | None = None,
        metric: Metric | None = None,
    ) -> None:
        """Raise IndexMismatchError for the first expectation (not None) the manifest breaks."""
        expected: list[tuple[str, Any, Any]] = [
            ("model_version", model_version, self.model_version),
            ("dim", dim, self.dim),
            ("metric", Metric(metric) if metric is not None else None, self.metric),
        ]
        for name, want, found in expected:
            if want is not None and want != found:
                shown_want = want.value if isinstance(want, Metric) else want
                shown_found = found.value if isinstance(found, Metric) else found
                raise IndexMismatchError(
                    f"{name}: expected {shown_want!r}, found {shown_found!r} in the index manifest"
                )
