"""build_index: directory layout, manifest, atomic publish, crash cleanup, input checks."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from core.index import FORMAT_VERSION, IndexManifest, Metric, VectorIndex, annoy_index, build_index


def sample(n: int = 400, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Arbitrary int64 ids (negative, huge, unsorted) and float32 vectors."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(-(2**62), 2**62, 2**50, dtype=np.int64), n, replace=False)
    return ids, rng.standard_normal((n, dim)).astype(np.float32)


def build(directory: Path, ids: np.ndarray, vectors: np.ndarray, **kw) -> IndexManifest:
    args = dict(index_version="v1", model_version="m1", metric=Metric.EUCLIDEAN, n_trees=5)
    args.update(kw)
    return build_index(directory, ids, vectors, **args)


@pytest.mark.parametrize("on_disk", [True, False])
def test_directory_layout_and_manifest(tmp_path: Path, on_disk: bool) -> None:
    ids, vectors = sample()
    target = tmp_path / "indexes" / "v1"
    started = time.perf_counter()
    manifest = build(target, ids, vectors, metric=Metric.ANGULAR, n_trees=7, on_disk=on_disk)
    wall = time.perf_counter() - started

    assert sorted(p.name for p in target.iterdir()) == ["ids.npy", "index.ann", "manifest.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["v1"]  # no temp dir left
    np.testing.assert_array_equal(np.load(target / "ids.npy"), ids)
    assert manifest == IndexManifest.read(target)
    on_disk_json = json.loads((target / "manifest.json").read_text())
    assert on_disk_json["metric"] == "angular"
    assert (manifest.format_version, manifest.index_version, manifest.model_version) == (
        FORMAT_VERSION, "v1", "m1")
    assert (manifest.metric, manifest.dim, manifest.n_trees, manifest.count) == (
        Metric.ANGULAR, 16, 7, 400)
    assert manifest.checksum == hashlib.sha256((target / "index.ann").read_bytes()).hexdigest()
    assert manifest.ids_checksum == hashlib.sha256((target / "ids.npy").read_bytes()).hexdigest()
    built = datetime.fromisoformat(manifest.built_at)
    assert built.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - built).total_seconds()) < 60
    assert 0 < manifest.build_seconds <= wall  # the Annoy build itself, inside the call


def test_existing_target_is_refused_and_untouched(tmp_path: Path) -> None:
    ids, vectors = sample()
    target = tmp_path / "v1"
    build(target, ids, vectors)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError, match="already exists"):
        build(target, ids[:10], vectors[:10])
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    # an empty directory counts too: a plain rename would silently replace it
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):
        build(tmp_path / "empty", ids, vectors)
    assert list((tmp_path / "empty").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "v1"]


def test_target_appearing_during_the_build_is_not_replaced(tmp_path: Path, monkeypatch) -> None:
    """Someone else publishes the same name while we build: we fail, they stay."""
    ids, vectors = sample()
    target = tmp_path / "v1"
    real_write = IndexManifest.write

    def write_then_race(self: IndexManifest, directory: Path) -> Path:
        target.mkdir()
        return real_write(self, directory)

    monkeypatch.setattr(IndexManifest, "write", write_then_race)
    with pytest.raises(FileExistsError):
        build(target, ids, vectors)
    assert list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


class Boom(Exception):
    pass


@pytest.mark.parametrize("stage", ["manifest", "rename", "interrupt"])
def test_crash_mid_build_leaves_nothing(tmp_path: Path, monkeypatch, stage: str) -> None:
    ids, vectors = sample()
    parent = tmp_path / "indexes"
    parent.mkdir()

    def fail(*_a, **_k):
        raise KeyboardInterrupt() if stage == "interrupt" else Boom(stage)

    if stage == "manifest":
        monkeypatch.setattr(IndexManifest, "write", fail)
    elif stage == "rename":
        monkeypatch.setattr(annoy_index, "rename_no_replace", fail)
    else:
        monkeypatch.setattr(annoy_index, "sha256_file", fail)
    with pytest.raises(KeyboardInterrupt if stage == "interrupt" else Boom):
        build(parent / "v1", ids, vectors)
    assert list(parent.iterdir()) == []


def test_rebuild_after_a_crash_succeeds(tmp_path: Path, monkeypatch) -> None:
    ids, vectors = sample()
    with monkeypatch.context() as m:
        m.setattr(annoy_index, "rename_no_replace", lambda *a: (_ for _ in ()).throw(Boom()))
        with pytest.raises(Boom):
            build(tmp_path / "v1", ids, vectors)
    build(tmp_path / "v1", ids, vectors)
    assert len(VectorIndex.load(tmp_path / "v1")) == len(ids)


def _bad_inputs() -> list:
    ids, vec = sample(n=5, dim=4)
    nan = vec.copy()
    nan[3, 1] = np.nan
    inf = vec.copy()
    inf[0, 0] = np.inf
    dup = ids.copy()
    dup[4] = dup[1]
    return [
        pytest.param(ids, vec.astype(np.float64), {}, "float32", id="float64"),
        pytest.param(ids, vec[0], {}, "2-D", id="1-d vectors"),
        pytest.param(ids, vec.tolist(), {}, "numpy array", id="list"),
        pytest.param(ids[:0], vec[:0], {}, "empty", id="empty"),
        pytest.param(ids, vec[:, :0], {}, "dimension 0", id="zero dim"),
        pytest.param(ids, nan, {}, r"NaN or infinite values \(first at row 3\)", id="nan"),
        pytest.param(ids, inf, {}, "NaN or infinite", id="inf"),
        pytest.param(ids[:4], vec, {}, r"len\(ids\) = 4 but there are 5 vectors", id="len"),
        pytest.param(dup, vec, {}, f"unique.*e.g. {int(ids[1])}", id="duplicate ids"),
        pytest.param(ids.astype(np.float64), vec, {}, "integers", id="float ids"),
        pytest.param(ids[:, None], vec, {}, "1-D", id="2-d ids"),
        pytest.param(ids, vec, {"n_trees": 0}, "n_trees must be a positive integer", id="trees"),
        pytest.param(ids, vec, {"metric": "cosine"}, "not a valid Metric", id="metric"),
        pytest.param(ids, vec, {"model_version": ""}, "non-empty", id="model version"),
    ]


@pytest.mark.parametrize(("ids", "vectors", "kw", "message"), _bad_inputs())
def test_invalid_input_is_refused_clearly(tmp_path: Path, ids, vectors, kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        build(tmp_path / "v1", ids, vectors, **kw)
    assert list(tmp_path.iterdir()) == []
