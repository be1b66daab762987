"""Near-duplicate detection against a brute-force reference, on Fashion-MNIST with planted copies.

The catalog is imported for real (the photos are in the media store), so the
verification reads and stores real signatures."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from cli.main import lookalike
from core.catalog.sample import Split, load_split
from core.config import Settings
from core.db import JobKind, make_session_factory
from core.duplicate_scans import NoScanYet, latest_scan
from core.duplicates import DuplicatePair, NoActiveIndex, calibrated_threshold, find_duplicates, group_pairs
from core.embedding import Embedder
from core.media import MediaStore
from core.signatures import aligned_similarity, thumbnail
from tests.fixtures.near_copies import CopyKind, near_copy
from tests.service.support import Catalog, add_items, embed, new_catalog, publish

N_ITEMS = 120
PLANTED = {0: CopyKind.JPEG, 7: CopyKind.RESIZE, 19: CopyKind.CROP, 33: CopyKind.JPEG, 50: CopyKind.RESIZE}
"""Source row -> how its copy under a new id was made."""


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def planted(tmp_path: Path, sqlite_engine: object) -> tuple[Catalog, dict[str, np.ndarray], dict[str, Image.Image]]:
    """120 Fashion-MNIST items plus 5 copies under ``dup-<source>`` ids, embedded by a tiny model, published."""
    settings = Settings(home=tmp_path / "home", torch_threads=1, annoy_search_k=100_000,
                        duplicate_search_k=100_000)
    settings = settings.replace(database_url=settings.resolved_database_url)
    sessions: sessionmaker[Session] = make_session_factory(sqlite_engine)  # type: ignore[arg-type]
    cat = new_catalog(settings, sessions)
    images, _ = load_split(Path("/usr/share/datasets/fashion-mnist"), Split.TEST)
    pictures = {f"fm-{i:03d}": Image.fromarray(images[i], "L") for i in range(N_ITEMS)}
    pictures.update({f"dup-{i:03d}": near_copy(pictures[f"fm-{i:03d}"], how) for i, how in PLANTED.items()})
    add_items(cat, [{"external_id": ext, "photos": [_png(im)]} for ext, im in pictures.items()], seed_base=0)
    embedder = Embedder.from_checkpoint(settings.models_dir / f"{cat.model_version}.pt", device="cpu")
    vectors = embedder.embed(list(pictures.values()))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [cat.items[ext]["image_ids"][0] for ext in pictures]
    embed(cat, ids, vectors)
    publish(cat, ids)
    return cat, dict(zip(pictures, vectors, strict=True)), pictures


def _find(cat: Catalog, **options: object) -> object:
    options = {"ratio": cat.settings.duplicate_ratio, "min_similarity": cat.settings.duplicate_min_similarity,
               "search_k": 100_000, **options}
    return find_duplicates(cat.sessions, MediaStore.from_settings(cat.settings), **options)  # type: ignore[arg-type]


def _reference(vectors: dict[str, np.ndarray], pictures: dict[str, Image.Image], ratio: float,
               bar: float) -> tuple[float, set[tuple[str, ...]]]:
    """Every pair, exactly: closer than ratio x the median nearest-other distance and similar enough; components."""
    names = sorted(vectors)
    matrix = np.stack([vectors[n] for n in names]).astype(np.float64)
    dist = np.sqrt(np.maximum(((matrix[:, None, :] - matrix[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(dist, np.inf)
    threshold = ratio * float(np.median(dist.min(axis=1)))
    a, b = np.nonzero(np.triu(dist < threshold, 1))
    thumbs = np.stack([thumbnail(pictures[n]) for n in names])
    similar = aligned_similarity(thumbs, a, b) >= bar
    groups: list[set[str]] = []
    for x, y in zip(a[similar], b[similar], strict=True):
        joined = {names[x], names[y]}
        for g in [g for g in groups if g & joined]:
            joined |= g
            groups.remove(g)
        groups.append(joined)
    return threshold, {tuple(sorted(g)) for g in groups}


def test_planted_copies_are_grouped_as_the_exact_reference_says(planted: tuple[Catalog, dict, dict]) -> None:
    cat, vectors, pictures = planted
    report = _find(cat)
    threshold, groups = _reference(vectors, pictures, cat.settings.duplicate_ratio,
                                   cat.settings.duplicate_min_similarity)
    assert report.calibrated and report.images == N_ITEMS + len(PLANTED)
    assert report.threshold == pytest.approx(threshold, rel=1e-4)
    assert report.signatures_computed == N_ITEMS + len(PLANTED) and report.candidates > 0
    assert {g.items for g in report.groups} == groups
    # Every planted copy, re-encoded, resized or cropped, is found, and nothing else:
    # the verification separates the copies from the distinct products the embedding
    # puts as close.
    assert groups == {(f"dup-{i:03d}", f"fm-{i:03d}") for i in PLANTED}
    for group in report.groups:
        assert all(p.distance < report.threshold and p.similarity >= report.min_similarity for p in group.pairs)
    keys = [(-len(g.items), g.min_distance, g.items) for g in report.groups]
    assert keys == sorted(keys)
    again = _find(cat)  # the signatures are stored: nothing is decoded twice
    assert again.signatures_computed == 0 and [g.items for g in again.groups] == [g.items for g in report.groups]


def test_without_verification_the_embedding_alone_groups(planted: tuple[Catalog, dict, dict]) -> None:
    cat, _, _ = planted
    loose = _find(cat, min_similarity=-1.0)
    assert loose.candidates == sum(len(g.pairs) for g in loose.groups)
    assert len({i for g in loose.groups for i in g.items}) > 2 * len(PLANTED)  # distinct products joined too


def test_explicit_threshold_overrides_calibration(planted: tuple[Catalog, dict, dict]) -> None:
    cat, _, _ = planted
    assert _find(cat, threshold=0.0).groups == ()
    wide = _find(cat, threshold=10.0, min_similarity=-1.0)
    assert not wide.calibrated and len(wide.groups) == 1 and len(wide.groups[0].items) == N_ITEMS + len(PLANTED)


def test_group_pairs_joins_chains_and_skips_same_item() -> None:
    item_of = {1: 10, 2: 20, 3: 30, 4: 40, 5: 40}
    external = {10: "a", 20: "b", 30: "c", 40: "d"}
    pairs = [DuplicatePair(1, 2, 0.1), DuplicatePair(2, 3, 0.2), DuplicatePair(4, 1, 0.9)]
    groups = group_pairs(pairs, item_of, external, threshold=0.5)
    assert [g.items for g in groups] == [("a", "b", "c")]
    similar = [DuplicatePair(1, 2, 0.1, 0.995), DuplicatePair(2, 3, 0.2, 0.9)]
    assert [g.items for g in group_pairs(similar, item_of, external, 0.5, 0.99)] == [("a", "b")]
    assert calibrated_threshold(np.array([1.0, 2.0, 3.0, np.inf], np.float32), 0.5) == (1.0, 2.0)


def test_no_active_index_is_an_error(settings: Settings, sqlite_engine: object) -> None:
    sessions = make_session_factory(sqlite_engine)  # type: ignore[arg-type]
    with pytest.raises(NoActiveIndex):
        find_duplicates(sessions, MediaStore.from_settings(settings), ratio=0.3, min_similarity=0.99)


def test_cli_lists_the_same_groups(planted: tuple[Catalog, dict, dict]) -> None:
    cat, _, _ = planted
    env = {"LOOKALIKE_HOME": str(cat.settings.home), "LOOKALIKE_BROKER_URL": "",
           "LOOKALIKE_DUPLICATE_SEARCH_K": "100000"}
    runner = CliRunner()
    as_json = runner.invoke(lookalike, ["catalog", "duplicates", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    expected = _find(cat)
    data = json.loads(as_json.stdout)
    assert [tuple(g["items"]) for g in data["groups"]] == [g.items for g in expected.groups]
    assert data["calibrated"] and data["threshold"] == pytest.approx(expected.threshold)
    assert data["min_similarity"] == cat.settings.duplicate_min_similarity
    assert all(p["similarity"] >= data["min_similarity"] for g in data["groups"] for p in g["pairs"])
    loose = runner.invoke(lookalike, ["catalog", "duplicates", "--json", "--min-similarity", "-1"], env=env)
    assert loose.exit_code == 0
    joined = {i for g in json.loads(loose.stdout)["groups"] for i in g["items"]}
    assert joined > {i for g in data["groups"] for i in g["items"]}  # the embedding alone joins more
    text = runner.invoke(lookalike, ["catalog", "duplicates", "--threshold", "0"], env=env)
    assert text.exit_code == 0 and text.stdout == "" and "0 group(s)" in text.stderr
    with pytest.raises(NoScanYet):  # printing is not saving
        latest_scan(cat.sessions)
    saved = runner.invoke(lookalike, ["catalog", "duplicates", "--json", "--save"], env=env)
    assert saved.exit_code == 0, saved.output
    job = latest_scan(cat.sessions)
    assert f"saved as scan job {job.id}" in saved.stderr and job.kind is JobKind.DUPLICATES
    assert job.result == json.loads(saved.stdout) and job.params["reason"] == "cli"
    assert [g["items"] for g in job.result["groups"]] == [g["items"] for g in data["groups"]]


def test_cli_without_an_index_fails_clearly(settings: Settings, sqlite_engine: object) -> None:
    result = CliRunner().invoke(lookalike, ["catalog", "duplicates"],
                                env={"LOOKALIKE_HOME": str(settings.home), "LOOKALIKE_BROKER_URL": ""})
    assert result.exit_code == 1 and "no index is published" in result.stderr
