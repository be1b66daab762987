"""Similar-by-item with every embedded photo of the query item, against a brute-force reference.

Rule under test (service/searcher/engine.py ``search_photos``): a result item's
distance is its best distance over all (query photo, result photo) pairs, shown with
that result photo; the query item is excluded; filters apply; top k. The catalogs are
real (imported items, stored vectors, a real Annoy index built and published by the
project's code, the real Searcher and app); search_k is far above the index size, so
Annoy is exhaustive and the answer must equal the numpy reference exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from core.config import Settings
from core.db import Item, session_scope
from service.app import create_app
from service.filters import Filters
from service.searcher import Searcher, engine
from service.searcher.engine import MAX_QUERY_PHOTOS, SearchResult
from service.searcher.metadata import Exclusions
from tests.service.item_reference import brute_force_item, brute_force_photos, item_photo_vectors
from tests.service.support import DIM, Catalog, add_items, embed, new_catalog, publish, unit_rows

BASIS = np.eye(DIM, dtype=np.float64)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def near(center: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector about ``distance`` away from the unit vector ``center``."""
    noise = rng.normal(size=DIM)
    noise -= noise @ center * center  # orthogonal to center
    return unit(center + distance * noise / np.linalg.norm(noise))


def build(cat: Catalog, specs: Sequence[dict[str, Any]], vectors: dict[str, np.ndarray], *,
          seed_base: int, index: bool = True) -> None:
    """Import ``specs``, store ``vectors[external_id]`` (one row per photo), index them if asked."""
    add_items(cat, specs, seed_base=seed_base)
    ids, rows = [], []
    for spec in specs:
        image_ids = cat.items[spec["external_id"]]["image_ids"]
        v = vectors[spec["external_id"]]
        assert len(v) == len(image_ids)
        ids += image_ids
        rows.append(v)
    embed(cat, ids, np.concatenate(rows).astype(np.float32))
    if index:
        publish(cat, sorted(cat.vectors))


def random_specs(n: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``n`` items with 1-4 photos; some items' photos are alike, some far apart."""
    specs, vectors = [], {}
    for i in range(n):
        ext = f"r-{i:03d}"
        category = "rare" if i % 17 == 5 else ("tops", "shoes")[i % 2]
        n_images = 1 + i % 4
        specs.append({"external_id": ext, "category": category, "group": f"g{i // 3}",
                      "attributes": {"color": ("red", "blue", "green")[i % 3]}, "n_images": n_images})
        center = unit(rng.normal(size=DIM))
        spread = (0.3, 0.8, 1.4)[i % 3]
        vectors[ext] = np.stack([near(center.astype(np.float64), spread, rng) for _ in range(n_images)])
    return specs, vectors


@pytest.fixture
def settings(service_settings: Settings) -> Settings:
    return service_settings.replace(database_url=service_settings.resolved_database_url)


@pytest.fixture
def cat(settings: Settings, service_sessions: sessionmaker[Session], sqlite_engine: Engine) -> Catalog:
    return new_catalog(settings, service_sessions)


@pytest.fixture
def app(cat: Catalog) -> Iterator[Flask]:
    application = create_app(cat.settings)
    yield application
    application.extensions["lookalike"].close()


def searcher_of(app: Flask) -> Searcher:
    return app.extensions["lookalike"].searcher


def triples(result: SearchResult) -> list[tuple[str, int, float]]:
    return [(m.meta.external_id, m.meta.image_id, m.distance) for m in result.matches]


def assert_same(result: SearchResult, expected: list[tuple[str, int, float]]) -> None:
    assert [(e, i) for e, i, _ in triples(result)] == [(e, i) for e, i, _ in expected]
    for (_, _, d), (_, _, want) in zip(triples(result), expected):
        assert d == pytest.approx(want, abs=1e-4)


# --------------------------------------------------------------------------- random catalogs
def test_every_item_matches_the_brute_force_rule(app: Flask, cat: Catalog) -> None:
    specs, vectors = random_specs(60, np.random.default_rng(3))
    build(cat, specs, vectors, seed_base=100)
    searcher = searcher_of(app)
    multi = 0
    for spec in specs:
        ext = spec["external_id"]
        for k in (1, 5, 12):
            result = searcher.similar_to_item(ext, k=k, filters=Filters())
            assert result.query_photos == spec["n_images"]
            assert_same(result, brute_force_item(cat, ext, k=k))
            assert ext not in {m.meta.external_id for m in result.matches}
        multi += spec["n_images"] > 1
    assert multi == 45


def test_multi_photo_answers_differ_from_first_photo_answers(app: Flask, cat: Catalog) -> None:
    specs, vectors = random_specs(60, np.random.default_rng(3))
    build(cat, specs, vectors, seed_base=100)
    differing = 0
    for spec in specs:
        if spec["n_images"] == 1:
            continue
        ext = spec["external_id"]
        got = [m.meta.external_id for m in searcher_of(app).similar_to_item(ext, k=5, filters=Filters()).matches]
        first_only = [e for e, _, _ in brute_force_photos(cat, item_photo_vectors(cat, ext)[:1], k=5,
                                                          exclude={ext})]
        differing += got != first_only
    assert differing >= 10  # the test catalog exercises the rule, not just the first photo


def test_filters_and_exclude_group_apply_to_every_photo(app: Flask, cat: Catalog) -> None:
    specs, vectors = random_specs(60, np.random.default_rng(4))
    build(cat, specs, vectors, seed_base=100)
    by_ext = {s["external_id"]: s for s in specs}
    searcher = searcher_of(app)
    for ext in ("r-003", "r-006", "r-011"):  # 4, 3 and 4 photos
        tops = {e for e, s in by_ext.items() if s["category"] == "tops"}
        result = searcher.similar_to_item(ext, k=10, filters=Filters(categories=("tops",)))
        assert_same(result, brute_force_item(cat, ext, k=10, allowed=tops))
        red_or_green = {e for e, s in by_ext.items() if s["attributes"]["color"] in {"red", "green"}}
        result = searcher.similar_to_item(ext, k=10, filters=Filters(attributes=(("color", ("red", "green")),)))
        assert_same(result, brute_force_item(cat, ext, k=10, allowed=red_or_green))
        siblings = {e for e, s in by_ext.items() if s["group"] == by_ext[ext]["group"]}
        result = searcher.similar_to_item(ext, k=10, filters=Filters(), exclude_group=True)
        assert_same(result, brute_force_item(cat, ext, k=10, exclude=siblings))
        # a rare category: fewer matching items than k, all of them come back, best pair first
        rare = {e for e, s in by_ext.items() if s["category"] == "rare"} - {ext}
        result = searcher.similar_to_item(ext, k=10, filters=Filters(categories=("rare",)))
        assert {m.meta.external_id for m in result.matches} == rare
        assert_same(result, brute_force_item(cat, ext, k=10, allowed=rare))


def test_exact_fallback_ranks_by_the_best_pair(app: Flask, cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, vectors = random_specs(60, np.random.default_rng(5))
    build(cat, specs, vectors, seed_base=100)
    # lists of 4 + 4 images per photo and a cap of 8: far below what the rare category needs
    monkeypatch.setattr(engine, "first_fetch", lambda k, filters, exclusions: 4)
    monkeypatch.setattr(engine, "MAX_ANN_CANDIDATES", 8)
    rare = {s["external_id"] for s in specs if s["category"] == "rare"}
    assert len(rare) == 4
    for ext in ("r-003", "r-007"):  # 4 photos each
        result = searcher_of(app).similar_to_item(ext, k=4, filters=Filters(categories=("rare",)))
        assert result.exact_fallback and result.query_photos == 4
        assert_same(result, brute_force_item(cat, ext, k=4, allowed=rare))


# --------------------------------------------------------------------------- designed geometry
def test_second_photo_finds_a_neighbour_the_first_does_not(app: Flask, cat: Catalog) -> None:
    rng = np.random.default_rng(6)
    e0, e1 = BASIS[0], BASIS[1]
    specs = [{"external_id": "query", "category": "a", "n_images": 2},
             {"external_id": "by-second", "category": "a"},
             {"external_id": "by-second-b", "category": "b"}]
    vectors = {"query": np.stack([unit(e0), unit(e1)]),
               "by-second": near(e1, 0.1, rng)[None, :],      # next to photo 2, ~1.4 from photo 1
               "by-second-b": near(e1, 0.15, rng)[None, :]}
    for j in range(8):  # the first photo's neighbours
        specs.append({"external_id": f"by-first-{j}", "category": ("a", "b")[j % 2], "n_images": 1 + j % 3})
        vectors[f"by-first-{j}"] = np.stack([near(e0, 0.3 + 0.05 * j, rng)] +
                                            [near(e0, 0.9 + 0.1 * j, rng) for _ in range(j % 3)])
    for j in range(30):  # unrelated filler
        specs.append({"external_id": f"far-{j}", "category": "a", "n_images": 1 + j % 4})
        vectors[f"far-{j}"] = unit_rows(rng, 1 + j % 4)
    build(cat, specs, vectors, seed_base=300)

    first_only = brute_force_photos(cat, vectors["query"][:1], k=3, exclude={"query"})
    assert "by-second" not in {e for e, _, _ in first_only}
    result = searcher_of(app).similar_to_item("query", k=3, filters=Filters())
    assert result.matches[0].meta.external_id == "by-second"
    assert result.matches[0].meta.image_id == cat.items["by-second"]["image_ids"][0]
    assert result.matches[0].distance == pytest.approx(0.1, abs=1e-3)
    assert_same(result, brute_force_item(cat, "query", k=3))
    # a filter keeps only category b: the second photo's b-neighbour comes first
    b = {s["external_id"] for s in specs if s["category"] == "b"}
    result = searcher_of(app).similar_to_item("query", k=3, filters=Filters(categories=("b",)))
    assert result.matches[0].meta.external_id == "by-second-b"
    assert_same(result, brute_force_item(cat, "query", k=3, allowed=b))


def test_a_cut_off_photo_list_widens_instead_of_missing_a_closer_item(app: Flask, cat: Catalog) -> None:
    """Photo 2's first list is full of two items' photos; an item just past it must still rank 3rd."""
    rng = np.random.default_rng(7)
    e0, e1 = BASIS[0], BASIS[1]
    specs = [{"external_id": "query", "n_images": 2},
             {"external_id": "cluster-1", "n_images": 10}, {"external_id": "cluster-2", "n_images": 10},
             {"external_id": "just-past"}]
    vectors = {"query": np.stack([unit(e0), unit(e1)]),
               "cluster-1": np.stack([near(e1, 0.04 + 0.001 * j, rng) for j in range(10)]),
               "cluster-2": np.stack([near(e1, 0.05 + 0.001 * j, rng) for j in range(10)]),
               "just-past": near(e1, 0.3, rng)[None, :]}
    for j in range(6):
        specs.append({"external_id": f"by-first-{j}"})
        vectors[f"by-first-{j}"] = near(e0, 0.5 + 0.05 * j, rng)[None, :]
    for j in range(20):
        specs.append({"external_id": f"far-{j}"})
        vectors[f"far-{j}"] = unit_rows(rng, 1)
    build(cat, specs, vectors, seed_base=400)
    k = 3
    per_photo = engine.first_fetch(k, Filters(), Exclusions(item_id=1)) + 2
    assert per_photo < 20  # photo 2's first list holds only cluster photos
    result = searcher_of(app).similar_to_item("query", k=k, filters=Filters())
    assert [m.meta.external_id for m in result.matches] == ["cluster-1", "cluster-2", "just-past"]
    assert result.rounds == 2
    assert_same(result, brute_force_item(cat, "query", k=k))


def test_at_most_max_query_photos_are_used(app: Flask, cat: Catalog) -> None:
    rng = np.random.default_rng(8)
    assert MAX_QUERY_PHOTOS == 8
    hidden = BASIS[5]
    first_eight = unit_rows(rng, 8).astype(np.float64)
    specs = [{"external_id": "many", "n_images": 10}, {"external_id": "near-9th"}]
    vectors = {"many": np.concatenate([first_eight, np.stack([unit(hidden), near(hidden, 0.5, rng)])]),
               "near-9th": near(hidden, 0.05, rng)[None, :]}
    for j in range(20):  # each near one of the first eight photos: closer than near-9th is to them
        specs.append({"external_id": f"other-{j}", "n_images": 1 + j % 2})
        vectors[f"other-{j}"] = np.stack([near(unit(first_eight[j % 8]).astype(np.float64), 0.3 + 0.02 * j, rng)] +
                                         [unit_rows(rng, 1)[0] for _ in range(j % 2)])
    build(cat, specs, vectors, seed_base=500)
    result = searcher_of(app).similar_to_item("many", k=5, filters=Filters())
    assert result.query_photos == MAX_QUERY_PHOTOS
    assert "near-9th" not in {m.meta.external_id for m in result.matches}
    assert_same(result, brute_force_item(cat, "many", k=5))  # the reference also takes the first 8
    all_ten = brute_force_photos(cat, item_photo_vectors(cat, "many", limit=10), k=1, exclude={"many"})
    assert all_ten[0][0] == "near-9th"  # what the cap leaves out


def test_one_photo_item_is_one_plain_search(app: Flask, cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, vectors = random_specs(40, np.random.default_rng(9))
    build(cat, specs, vectors, seed_base=100)
    searcher = searcher_of(app)
    single = "r-000"  # 1 photo
    state = searcher.current()
    assert state is not None
    vector = state.index.vector(cat.items[single]["image_ids"][0])
    with searcher._engine.connect() as conn:  # noqa: SLF001 - the searcher's own engine
        direct = engine.search(state, conn, vector, k=8, filters=Filters(),
                               exclusions=Exclusions(item_id=_item_id(cat, single)),
                               search_k=cat.settings.annoy_search_k)
    searched: list[np.ndarray] = []
    calls = {"candidates": 0}
    real_search, real_candidates = engine.search, engine.candidates

    def spy_search(*args: Any, **kwargs: Any) -> SearchResult:
        searched.append(args[2])
        return real_search(*args, **kwargs)

    def spy_candidates(*args: Any, **kwargs: Any) -> Any:
        calls["candidates"] += 1
        return real_candidates(*args, **kwargs)

    monkeypatch.setattr(engine, "search", spy_search)
    monkeypatch.setattr(engine, "candidates", spy_candidates)
    result = searcher.similar_to_item(single, k=8, filters=Filters())
    assert len(searched) == 1 and np.array_equal(searched[0], vector)
    assert calls["candidates"] == result.rounds == 1 and result.query_photos == 1
    assert triples(result) == triples(direct)  # the very same answer, distances included
    assert_same(result, brute_force_item(cat, single, k=8))
    # a 3-photo item: no plain search, one index query per photo per round
    searched.clear()
    calls["candidates"] = 0
    result = searcher.similar_to_item("r-002", k=8, filters=Filters())
    assert not searched and result.query_photos == 3
    assert calls["candidates"] == 3 * result.rounds


def _item_id(cat: Catalog, external_id: str) -> int:
    with session_scope(cat.sessions) as s:
        return s.scalar(select(Item.id).where(Item.external_id == external_id))


# --------------------------------------------------------------------------- fresh vectors
def test_fresh_photos_count_as_query_photos_and_as_results(app: Flask, cat: Catalog) -> None:
    rng = np.random.default_rng(10)
    specs, vectors = random_specs(40, rng)
    # "mixed": photo 1 is indexed, photo 2 gets its vector only after the index is built
    specs.append({"external_id": "mixed", "category": "tops", "n_images": 2})
    add_items(cat, specs, seed_base=100)
    indexed = []
    for spec in specs[:-1]:
        embed(cat, cat.items[spec["external_id"]]["image_ids"], vectors[spec["external_id"]])
        indexed += cat.items[spec["external_id"]]["image_ids"]
    mixed_ids = cat.items["mixed"]["image_ids"]
    embed(cat, mixed_ids[:1], unit(BASIS[3])[None, :])
    publish(cat, indexed + mixed_ids[:1])
    searcher = searcher_of(app)
    assert searcher.similar_to_item("mixed", k=3, filters=Filters()).query_photos == 1

    # after the build: mixed's 2nd photo, and a new 2-photo item whose 2nd photo is next to
    # r-002's 3rd photo (r-002 is indexed), all only in the fresh set
    embed(cat, mixed_ids[1:], unit(BASIS[4])[None, :])
    target = cat.vectors[cat.items["r-002"]["image_ids"][2]].astype(np.float64)
    add_items(cat, [{"external_id": "fresh-2p", "category": "shoes", "n_images": 2},
                    {"external_id": "near-mixed", "category": "shoes"}], seed_base=900)
    embed(cat, cat.items["fresh-2p"]["image_ids"], np.stack([unit_rows(rng, 1)[0], near(target, 0.02, rng)]))
    embed(cat, cat.items["near-mixed"]["image_ids"], near(BASIS[4], 0.1, rng)[None, :])
    state = searcher.refresh_now()
    assert state is not None and len(state.fresh) == 4 and state.index_version == cat.index_version

    result = searcher.similar_to_item("r-002", k=5, filters=Filters())
    assert result.matches[0].meta.external_id == "fresh-2p"
    assert result.matches[0].meta.image_id == cat.items["fresh-2p"]["image_ids"][1]
    assert_same(result, brute_force_item(cat, "r-002", k=5))
    # the fresh item as the query: both its photos come from the fresh set
    result = searcher.similar_to_item("fresh-2p", k=5, filters=Filters())
    assert result.query_photos == 2 and result.matches[0].meta.external_id == "r-002"
    assert_same(result, brute_force_item(cat, "fresh-2p", k=5))
    # an indexed photo plus a fresh one: the fresh one finds near-mixed (itself fresh)
    result = searcher.similar_to_item("mixed", k=5, filters=Filters())
    assert result.query_photos == 2 and result.matches[0].meta.external_id == "near-mixed"
    assert_same(result, brute_force_item(cat, "mixed", k=5))
    shoes = {e for e, item in cat.items.items() if item["category"] == "shoes"}
    result = searcher.similar_to_item("mixed", k=5, filters=Filters(categories=("shoes",)))
    assert_same(result, brute_force_item(cat, "mixed", k=5, allowed=shoes))

    # a re-embedded indexed photo: its fresh vector is the one searched with and found
    r5 = cat.items["r-005"]["image_ids"]  # 2 photos, both indexed
    embed(cat, r5[1:], near(target, 0.01, rng)[None, :])
    searcher.refresh_now()
    result = searcher.similar_to_item("r-005", k=5, filters=Filters())
    assert result.matches[0].meta.external_id == "r-002"
    assert_same(result, brute_force_item(cat, "r-005", k=5))
    result = searcher.similar_to_item("r-002", k=5, filters=Filters())
    assert_same(result, brute_force_item(cat, "r-002", k=5))


# --------------------------------------------------------------------------- HTTP
def test_http_similar_uses_every_photo(app: Flask, cat: Catalog) -> None:
    specs, vectors = random_specs(50, np.random.default_rng(11))
    build(cat, specs, vectors, seed_base=100)
    client = app.test_client()
    for ext in ("r-003", "r-010", "r-004"):  # 4, 3 and 1 photos
        body = client.get(f"/api/v1/items/{ext}/similar", query_string={"k": 6}).json
        expected = brute_force_item(cat, ext, k=6)
        assert [(r["external_id"], r["image_id"]) for r in body["results"]] == [(e, i) for e, i, _ in expected]
        for r, (_, _, d) in zip(body["results"], expected):
            assert r["distance"] == pytest.approx(d, abs=1e-4)
            assert r["score"] == pytest.approx(1 - d * d / 2, abs=1e-4)
        assert body["count"] == 6 and body["index_version"] == cat.index_version
    shoes_red = {s["external_id"] for s in specs if s["category"] == "shoes" and s["attributes"]["color"] == "red"}
    body = client.get("/api/v1/items/r-007/similar",
                      query_string={"k": 50, "category": "shoes", "attr": "color:red"}).json
    expected = brute_force_item(cat, "r-007", k=50, allowed=shoes_red)
    assert [(r["external_id"], r["image_id"]) for r in body["results"]] == [(e, i) for e, i, _ in expected]
    assert {r["external_id"] for r in body["results"]} == shoes_red - {"r-007"}
    spec = client.get("/api/v1/openapi.json").json
    description = spec["paths"]["/api/v1/items/{external_id}/similar"]["get"]["description"]
    assert "every embedded photo" in description and "best" in description
