"""The search engine below the HTTP layer: widening rounds, exact fallback, metrics, vector checks."""

from __future__ import annotations

import numpy as np
import pytest
from flask import Flask

from core.index import Metric
from service.filters import Filters
from service.searcher import BadVector, Searcher, engine, unit_vector
from tests.service.item_reference import brute_force_item
from tests.service.support import Catalog, publish


def searcher_of(app: Flask) -> Searcher:
    return app.extensions["lookalike"].searcher


def hats(cat: Catalog) -> set[str]:
    return {ext for ext, item in cat.items.items() if item["category"] == "hats"}


def test_widening_takes_several_rounds_and_finds_every_match(app: Flask, catalog: Catalog) -> None:
    result = searcher_of(app).similar_to_item("sku-001", k=4, filters=Filters(categories=("hats",)))
    assert result.rounds > 1 and not result.exact_fallback
    expected = brute_force_item(catalog, "sku-001", k=4, allowed=hats(catalog))  # sku-001 has 2 photos
    assert [m.meta.external_id for m in result.matches] == [e for e, _, _ in expected]


def test_exact_fallback_when_the_candidate_cap_is_reached(app: Flask, catalog: Catalog,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_ANN_CANDIDATES", 8)  # far below what the rare category needs
    result = searcher_of(app).similar_to_item("sku-001", k=4, filters=Filters(categories=("hats",)))
    assert result.exact_fallback
    expected = brute_force_item(catalog, "sku-001", k=4, allowed=hats(catalog))  # sku-001 has 2 photos
    assert [(m.meta.external_id, m.meta.image_id) for m in result.matches] == [(e, i) for e, i, _ in expected]
    for m, (_, _, d) in zip(result.matches, expected):
        assert m.distance == pytest.approx(d, abs=1e-5)


def test_angular_index_scores_are_cosines(app: Flask, catalog: Catalog) -> None:
    ids = [i for item in catalog.items.values() for i in item["image_ids"]]
    publish(catalog, ids, metric=Metric.ANGULAR)
    state = searcher_of(app).refresh_now()
    assert state is not None and state.metric is Metric.ANGULAR
    query = unit_vector(np.arange(1, 33, dtype=np.float64), 32)
    result = searcher_of(app).search_vector(query.tolist(), k=5, filters=Filters())
    owner = catalog.item_of_image()
    for m in result.matches:
        cosine = float(np.dot(catalog.vectors[m.meta.image_id], query))
        assert m.score == pytest.approx(cosine, abs=1e-4)
        assert m.distance == pytest.approx(np.sqrt(2 - 2 * cosine), abs=1e-3)
        assert owner[m.meta.image_id] == m.meta.external_id


@pytest.mark.parametrize("values, message", [
    ([1.0] * 31, "32 numbers"),
    ([0.0] * 32, "zeros"),
    ([float("nan")] + [1.0] * 31, "NaN"),
    ("abc", "list of numbers"),
])
def test_unit_vector_refuses_bad_input(values: object, message: str) -> None:
    with pytest.raises(BadVector, match=message):
        unit_vector(values, 32)


def test_unit_vector_survives_extreme_magnitudes() -> None:
    v = unit_vector([1e308, -1e308] + [0.0] * 30, 32)
    assert np.linalg.norm(v) == pytest.approx(1.0) and np.all(np.isfinite(v))
