"""VectorIndex: loading with expectations, queries against exact search, lookups, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.index import (
    IndexMismatchError,
    ManifestError,
    Metric,
    VectorIndex,
    build_index,
    exact_search,
)

N, DIM = 300, 8


def make(directory: Path, metric: Metric = Metric.EUCLIDEAN, *, n: int = N, seed: int = 0,
         vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if vectors is None:
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = rng.permutation(np.arange(len(vectors), dtype=np.int64) * 7919 - 10**9)
    build_index(directory, ids, vectors, index_version="v1", model_version="m1",
                metric=metric, n_trees=10)
    return ids, vectors


@pytest.mark.parametrize("metric", list(Metric))
def test_query_equals_exact_search(tmp_path: Path, metric: Metric) -> None:
    """With search_k covering every node Annoy is exact: same ids, same distances."""
    ids, vectors = make(tmp_path / "v1", metric)
    queries = np.random.default_rng(9).standard_normal((40, DIM)).astype(np.float32)
    want_rows, want_dist = exact_search(vectors, queries, 10, metric=metric)
    with VectorIndex.load(tmp_path / "v1", expected_metric=metric) as index:
        for q, rows, dist in zip(queries, want_rows, want_dist):
            got_ids, got_dist = index.query(q, 10, search_k=N * 10)
            assert got_ids.dtype == np.int64 and got_dist.dtype == np.float32
            np.testing.assert_array_equal(got_ids, ids[rows])
            np.testing.assert_allclose(got_dist, dist, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", [Metric.EUCLIDEAN, Metric.ANGULAR])
def test_query_by_id_returns_itself_first_at_zero(tmp_path: Path, metric: Metric) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors[50:60] = vectors[0]  # exact duplicates tie with the item itself
    ids, _ = make(tmp_path / "v1", metric, vectors=vectors)
    index = VectorIndex.load(tmp_path / "v1")
    for row in range(N):
        got_ids, got_dist = index.query_by_id(int(ids[row]), 5)
        assert got_ids[0] == ids[row]
        assert got_dist[0] == 0.0
        assert len(got_ids) == 5 and len(set(got_ids.tolist())) == 5
        assert np.all(np.diff(got_dist) >= 0)
    # with an exhaustive search the rest equals exact search minus the item itself
    want_rows, want_dist = exact_search(vectors, vectors[7:8], 6, metric=metric)
    got_ids, got_dist = index.query_by_id(int(ids[7]), 6, search_k=N * 10)
    np.testing.assert_array_equal(got_ids, ids[want_rows[0]])
    np.testing.assert_allclose(got_dist[1:], want_dist[0, 1:], rtol=1e-4)


def test_k_larger_than_count_returns_count(tmp_path: Path) -> None:
    ids, vectors = make(tmp_path / "v1", n=20)
    index = VectorIndex.load(tmp_path / "v1")
    got, _ = index.query(vectors[0], 1000, search_k=10_000)
    assert sorted(got.tolist()) == sorted(ids.tolist())
    got, _ = index.query_by_id(int(ids[3]), 1000, search_k=10_000)
    assert len(got) == 20 and got[0] == ids[3]


def test_lookups(tmp_path: Path) -> None:
    ids, vectors = make(tmp_path / "v1")
    index = VectorIndex.load(tmp_path / "v1")
    assert len(index) == N
    np.testing.assert_array_equal(index.ids, ids)
    assert index.contains(int(ids[17])) and not index.contains(12345)
    np.testing.assert_array_equal(index.vector(int(ids[17])), vectors[17])
    absent = np.array([ids.max() + 1, ids.min() - 1, 12345])
    assert index.rows_of(np.concatenate([ids[::-1], absent])).tolist() == (
        list(range(N))[::-1] + [-1, -1, -1])
    with pytest.raises(KeyError, match="12345"):
        index.query_by_id(12345, 3)
    with pytest.raises(KeyError):
        index.vector(12345)


def test_bad_queries(tmp_path: Path) -> None:
    make(tmp_path / "v1")
    index = VectorIndex.load(tmp_path / "v1")
    ok = np.zeros(DIM, np.float32)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        index.query(np.zeros(DIM + 1), 3)
    with pytest.raises(ValueError, match="NaN"):
        index.query(np.full(DIM, np.nan), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.query(ok, k)
    with pytest.raises(ValueError, match="search_k"):
        index.query(ok, 3, search_k=0)


def test_close(tmp_path: Path) -> None:
    ids, _ = make(tmp_path / "v1")
    index = VectorIndex.load(tmp_path / "v1")
    index.close()
    index.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        index.query_by_id(int(ids[0]), 3)


def test_expected_fields_mismatch(tmp_path: Path) -> None:
    make(tmp_path / "v1", Metric.ANGULAR)
    cases = [
        (dict(expected_model_version="m2"), "model_version: expected 'm2', found 'm1'"),
        (dict(expected_dim=16), "dim: expected 16, found 8"),
        (dict(expected_metric=Metric.EUCLIDEAN), "metric: expected 'euclidean', found 'angular'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(IndexMismatchError, match=message):
            VectorIndex.load(tmp_path / "v1", **kwargs)
    index = VectorIndex.load(tmp_path / "v1", expected_model_version="m1", expected_dim=DIM,
                             expected_metric=Metric.ANGULAR, verify_checksum=True)
    assert index.manifest.metric is Metric.ANGULAR


def _edit_manifest(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_unknown_format_version(tmp_path: Path) -> None:
    make(tmp_path / "v1")
    _edit_manifest(tmp_path / "v1", format_version=2)
    with pytest.raises(IndexMismatchError, match="format_version: expected 1, found 2"):
        VectorIndex.load(tmp_path / "v1")


@pytest.mark.parametrize("name", ["index.ann", "ids.npy"])
def test_checksum_mismatch(tmp_path: Path, name: str) -> None:
    make(tmp_path / "v1")
    path = tmp_path / "v1" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the last bytes are vector / id payload, so it still loads
    path.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match=f"checksum of {name}: expected"):
        VectorIndex.load(tmp_path / "v1", verify_checksum=True)
    VectorIndex.load(tmp_path / "v1")  # not verified: loads (that is what the flag is for)


def test_count_disagreeing_with_files(tmp_path: Path) -> None:
    make(tmp_path / "v1")
    _edit_manifest(tmp_path / "v1", count=N + 1)
    with pytest.raises(IndexMismatchError, match="ids.npy: expected int64"):
        VectorIndex.load(tmp_path / "v1")


def test_wrong_dimension_in_manifest_is_caught(tmp_path: Path) -> None:
    """Annoy cannot tell the dimension from the file; the loader must not trust a lie."""
    make(tmp_path / "v1")
    _edit_manifest(tmp_path / "v1", dim=DIM * 4)
    with pytest.raises(IndexMismatchError, match="does not load|count: expected"):
        VectorIndex.load(tmp_path / "v1")


def test_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index directory not found"):
        VectorIndex.load(tmp_path / "nope")
    make(tmp_path / "v1")
    for name in ("index.ann", "ids.npy", "manifest.json"):
        broken = tmp_path / f"without-{name}"
        shutil.copytree(tmp_path / "v1", broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
            VectorIndex.load(broken)
    (tmp_path / "v1" / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        VectorIndex.load(tmp_path / "v1")
    (tmp_path / "v1" / "manifest.json").write_text('{"format_version": 1}')
    with pytest.raises(ManifestError, match="missing the field"):
        VectorIndex.load(tmp_path / "v1")
