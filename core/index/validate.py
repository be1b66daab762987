"""Input checks shared by the index builder, the loaded index and exact search.

Each check raises ValueError with a message that says what is wrong, so a bad
batch of embeddings fails at the door instead of as a cryptic Annoy error later.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_vectors(vectors: np.ndarray, *, name: str = "vectors") -> np.ndarray:
    """A non-empty 2-D float32 array of finite values (returned C-contiguous)."""
    if not isinstance(vectors, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(vectors).__name__}")
    if vectors.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {vectors.shape}")
    if vectors.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {vectors.dtype}")
    n, dim = vectors.shape
    if n == 0:
        raise ValueError(f"{name} is empty: an index needs at least one vector")
    if dim == 0:
        raise ValueError(f"{name} has dimension 0")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} has {bad.size} row(s) with NaN or infinite values (first at row {bad[0]})"
        )
    return np.ascontiguousarray(vectors)


def check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """A 1-D array of ``n`` unique integers, returned as int64."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    if len(ids) != n:
        raise ValueError(f"len(ids) = {len(ids)} but there are {n} vectors")
    if ids.dtype == np.uint64 and ids.size and ids.max() > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in int64")
    ids = ids.astype(np.int64, copy=False)
    ordered = np.sort(ids)
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if dup.size:
        raise ValueError(f"ids must be unique; {dup.size} duplicate(s), e.g. {int(dup[0])}")
    return ids


def check_query(vector: np.ndarray, dim: int) -> np.ndarray:
    """One finite query vector of the index's dimension, as float32."""
    arr = np.asarray(vector, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"query vector must have shape ({dim},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("query vector has NaN or infinite values")
    return arr


def check_positive_int(value: object, name: str) -> int:
    """An int >= 1 (bools are refused: ``k=True`` is a bug, not a request for one item)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_search_k(value: object) -> int:
    """Annoy's search_k: -1 (Annoy's default, k * n_trees) or a positive int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"search_k must be an integer, got {value!r}")
    if value != -1 and value < 1:
        raise ValueError(f"search_k must be -1 (default) or positive, got {value}")
    return int(value)
