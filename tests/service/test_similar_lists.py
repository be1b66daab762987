"""Similar-by-item from the precomputed neighbour lists equals the brute-force rule (and so the Annoy path).

The same real catalogs as tests/service/test_similar_photos.py (imported items, stored
vectors, an index published by the project's code with exact lists of its images),
queried through the real Searcher: with fresh items added after the build, deleted
items, and merchandiser "dissimilar" marks, every answer must equal the numpy
reference, and most of them must have come from the lists (``result.listed``).
Short lists (K=12 images) make some queries fall back to the Annoy path, which must
give the same answer too.
"""

from __future__ import annotations

import numpy as np
from flask import Flask

from core.catalog import delete_items
from core.db import FeedbackJudgement, FeedbackSource, session_scope
from core.feedback import Judgement, record_feedback
from service.filters import Filters
from tests.service import test_similar_photos as photos
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog, embed, publish
from tests.service.test_similar_photos import assert_same, build, random_specs, searcher_of

# the same fixtures as the Annoy-path tests: one catalog, one app per test
settings, cat, app = photos.settings, photos.cat, photos.app

LISTS_K = 12


def _published(cat: Catalog, seed: int, n: int = 60) -> list[dict]:
    specs, vectors = random_specs(n, np.random.default_rng(seed))
    build(cat, specs, vectors, seed_base=100, index=False)
    publish(cat, sorted(cat.vectors), lists_k=LISTS_K)
    return specs


def test_lists_answer_every_item_as_the_brute_force_rule(app: Flask, cat: Catalog) -> None:
    specs = _published(cat, seed=3)
    searcher = searcher_of(app)
    listed = 0
    for spec in specs:
        for k in (1, 5, 10):
            result = searcher.similar_to_item(spec["external_id"], k=k, filters=Filters())
            assert_same(result, brute_force_item(cat, spec["external_id"], k=k))
            listed += result.listed
    assert listed >= 100  # of 180: the lists serve most, the rest took the Annoy path


def test_fresh_items_deletions_and_marks_apply_on_the_lists_path(app: Flask, cat: Catalog) -> None:
    specs = _published(cat, seed=4)
    searcher = searcher_of(app)
    searcher.similar_to_item("r-000", k=1, filters=Filters())  # loads the index
    # fresh: new items near existing ones, after the build; and one re-embedded photo
    late, late_vectors = random_specs(70, np.random.default_rng(9))
    late, late_vectors = late[60:], {}
    rng = np.random.default_rng(11)
    for i, spec in enumerate(late):
        spec["external_id"] = f"late-{i}"
        target = cat.vectors[cat.items[specs[i * 5]["external_id"]]["image_ids"][0]]
        noise = rng.normal(size=(spec["n_images"], len(target))) * 0.02
        v = target[None, :] + noise
        late_vectors[spec["external_id"]] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    build(cat, late, late_vectors, seed_base=900, index=False)
    moved = cat.items["r-020"]["image_ids"][0]
    towards = cat.vectors[cat.items["r-021"]["image_ids"][0]] + rng.normal(size=len(target)) * 0.05
    embed(cat, [moved], (towards / np.linalg.norm(towards)).astype(np.float32)[None, :])
    markers = {spec["external_id"] for spec in specs[:30]} - {"r-002"}
    with session_scope(cat.sessions) as s:
        record_feedback(s, [Judgement(ext, "r-002", FeedbackJudgement.DISSIMILAR, FeedbackSource.MERCHANDISER)
                            for ext in sorted(markers)])
    with session_scope(cat.sessions) as s:
        delete_items(s, ["r-001", "r-010", "late-3"])
    for ext in ("r-001", "r-010", "late-3"):
        cat.items.pop(ext)  # the reference no longer knows them
    searcher.holder.refresh()
    assert len(searcher.current().fresh) > 0

    listed = 0
    for spec in specs:
        ext = spec["external_id"]
        if ext in ("r-001", "r-010"):
            continue
        marked = {"r-002"} if ext in markers else set()
        for k in (5, 10):
            result = searcher.similar_to_item(ext, k=k, filters=Filters())
            assert_same(result, brute_force_item(cat, ext, k=k, exclude=marked))
            got = {m.meta.external_id for m in result.matches}
            assert not got & {"r-001", "r-010", "late-3"} and not got & marked
            listed += result.listed
    assert listed >= 50
    # the item with a re-embedded photo is not served from its (stale) lists
    assert not searcher.similar_to_item("r-020", k=5, filters=Filters()).listed
