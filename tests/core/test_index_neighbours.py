"""Neighbour lists: equal to brute force (exact), recall recorded, checksummed, old versions load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.atomic_files import sha256_file
from core.index import IndexManifest, Metric, VectorIndex, build_index, exact_search
from core.index.manifest import NEIGHBOUR_DISTANCES_FILE, NEIGHBOURS_FILE
from core.index.neighbours import NeighbourLists, NeighbourMethod, add_neighbour_lists


def built(tmp_path: Path, metric: Metric, n: int = 300, dim: int = 12) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    if metric is Metric.ANGULAR:
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    directory = tmp_path / "v1"
    build_index(directory, np.arange(1000, 1000 + n, dtype=np.int64), vectors, index_version="v1",
                model_version="m1", metric=metric, n_trees=10)
    return directory, vectors


@pytest.mark.parametrize("metric", [Metric.EUCLIDEAN, Metric.ANGULAR])
def test_exact_lists_equal_brute_force(tmp_path: Path, metric: Metric) -> None:
    directory, vectors = built(tmp_path, metric)
    manifest = add_neighbour_lists(directory, vectors, k=16, exact_limit=10_000, search_k=-1, chunk_rows=64)
    assert manifest.neighbours_k == 16 and manifest.neighbours_method == NeighbourMethod.EXACT.value
    assert manifest.neighbours_recall == 1.0
    assert IndexManifest.read(directory) == manifest
    assert manifest.neighbours_checksum == sha256_file(directory / NEIGHBOURS_FILE)
    assert manifest.neighbour_distances_checksum == sha256_file(directory / NEIGHBOUR_DISTANCES_FILE)

    lists = NeighbourLists.open(directory, manifest, verify_checksum=True)
    assert lists is not None and lists.k == 16
    assert isinstance(lists.rows, np.memmap)  # shared pages, not a private copy
    truth, truth_d = exact_search(vectors, vectors, 16, metric=metric)
    for row in range(len(vectors)):
        rows, dists = lists.of_row(row)
        assert rows[0] == row and dists[0] == 0.0
        # the row itself first, then the brute-force order of the others
        others = [r for r in truth[row].tolist() if r != row][:15]
        assert rows[1:].tolist() == others
        np.testing.assert_allclose(dists[1:], truth_d[row][truth[row] != row][:15], rtol=1e-5, atol=1e-6)


def test_annoy_lists_record_their_recall(tmp_path: Path) -> None:
    directory, vectors = built(tmp_path, Metric.ANGULAR)
    manifest = add_neighbour_lists(directory, vectors, k=20, exact_limit=10, search_k=5000)
    assert manifest.neighbours_method == NeighbourMethod.ANNOY.value
    assert 0.95 <= manifest.neighbours_recall <= 1.0
    lists = NeighbourLists.open(directory, manifest)
    assert lists is not None
    index = VectorIndex.load(directory)
    for row in (0, 17, 299):
        ids, dists = index.query_by_id(int(index.ids[row]), 20, search_k=5000)
        rows, ldists = lists.of_row(row)
        assert index.ids[rows].tolist() == ids.tolist()
        np.testing.assert_allclose(ldists, dists, rtol=1e-6)
    index.close()


def test_k_larger_than_the_index_is_cut(tmp_path: Path) -> None:
    directory, vectors = built(tmp_path, Metric.EUCLIDEAN, n=5)
    manifest = add_neighbour_lists(directory, vectors, k=32, exact_limit=100, search_k=-1)
    assert manifest.neighbours_k == 5
    lists = NeighbourLists.open(directory, manifest)
    assert lists is not None and sorted(lists.of_row(3)[0].tolist()) == [0, 1, 2, 3, 4]


def test_a_version_without_lists_still_loads(tmp_path: Path) -> None:
    directory, _ = built(tmp_path, Metric.EUCLIDEAN)
    data = json.loads((directory / "manifest.json").read_text())
    assert "neighbours_k" not in {k for k, v in data.items() if v}  # nothing written yet
    for key in [k for k in data if k.startswith("neighbour")]:
        del data[key]  # exactly what an older build wrote
    (directory / "manifest.json").write_text(json.dumps(data))
    manifest = VectorIndex.load(directory, verify_checksum=True).manifest
    assert manifest.neighbours_k == 0 and manifest.neighbours_recall == -1.0
    assert NeighbourLists.open(directory, manifest) is None


def test_a_corrupted_list_is_refused(tmp_path: Path) -> None:
    directory, vectors = built(tmp_path, Metric.EUCLIDEAN, n=50)
    manifest = add_neighbour_lists(directory, vectors, k=8, exact_limit=100, search_k=-1)
    path = directory / NEIGHBOURS_FILE
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum of neighbours.npy"):
        NeighbourLists.open(directory, manifest, verify_checksum=True)
