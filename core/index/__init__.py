"""Versioned Annoy index directories (build, load memory-mapped, query) and exact search."""

from core.index.annoy_index import VectorIndex, build_index
from core.index.exact import exact_search, recall_at_k
from core.index.manifest import (
    FORMAT_VERSION,
    IndexManifest,
    IndexMismatchError,
    ManifestError,
    Metric,
)
from core.index.verify import self_recall

__all__ = [
    "FORMAT_VERSION",
    "IndexManifest",
    "IndexMismatchError",
    "ManifestError",
    "Metric",
    "VectorIndex",
    "build_index",
    "exact_search",
    "recall_at_k",
    "self_recall",
]
