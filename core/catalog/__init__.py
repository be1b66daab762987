"""Catalog operations: import (CSV, JSONL, folder, sample), listing, soft delete.

Modules: :mod:`~core.catalog.rows` (the vocabulary), :mod:`~core.catalog.validate`
(field rules), :mod:`~core.catalog.formats` (readers), :mod:`~core.catalog.upsert`
(the chunked writer), :mod:`~core.catalog.sample` (Fashion-MNIST), and
:mod:`~core.catalog.queries` (list / get / delete).
"""

from core.catalog.formats import open_source
from core.catalog.imports import import_catalog, import_fashion_mnist
from core.catalog.queries import (
    DeleteOutcome,
    ItemPage,
    delete_item,
    delete_items,
    get_item,
    list_items,
    soft_delete_missing,
)
from core.catalog.rows import (
    CatalogFormatError,
    CatalogRow,
    CatalogSource,
    ImageRef,
    ImportFormat,
    ImportReport,
    RowError,
)
from core.catalog.sample import DEFAULT_DATASET_DIR, SampleDataset, Split, fashion_mnist_source
from core.catalog.upsert import DEFAULT_CHUNK_SIZE, Progress, import_rows

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_DATASET_DIR", "CatalogFormatError", "CatalogRow", "CatalogSource",
    "DeleteOutcome", "ImageRef", "ImportFormat", "ImportReport", "ItemPage", "Progress", "RowError",
    "SampleDataset", "Split", "delete_item", "delete_items", "fashion_mnist_source", "get_item",
    "import_catalog", "import_fashion_mnist", "import_rows", "list_items", "open_source",
    "soft_delete_missing",
]
