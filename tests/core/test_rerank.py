"""core.rerank against a loop-by-loop reference of the formula v' = norm(v + sum max(cos, 0)^alpha x_i)."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import ConfigError, RerankMode, Settings
from core.rerank import Rerank, augment_database, expand_query


def _reference(anchor: np.ndarray, neighbours: list[np.ndarray], alpha: float) -> np.ndarray:
    a = anchor / np.linalg.norm(anchor)
    total = a.astype(np.float64).copy()
    for x in neighbours:
        x = x / np.linalg.norm(x)
        total += max(float(a @ x), 0.0) ** alpha * x
    return total / np.linalg.norm(total)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_expand_query_matches_the_formula(alpha: float) -> None:
    rng = np.random.default_rng(1)
    q, nb = rng.normal(size=(7, 16)), rng.normal(size=(7, 3, 16)) * 2.5  # not unit: treated as directions
    out = expand_query(q, nb, alpha=alpha)
    want = np.stack([_reference(q[i], list(nb[i]), alpha) for i in range(7)])
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_negative_neighbours_do_not_pull_the_query() -> None:
    q = np.array([[1.0, 0.0]])
    out = expand_query(q, np.array([[[-1.0, 0.1]]]), alpha=1.0)
    np.testing.assert_allclose(out, [[1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize(("n", "alpha"), [(1, 0.0), (2, 3.0), (5, 1.0)])
def test_augment_database_matches_a_brute_force_reference(n: int, alpha: float) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 8))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.argsort(-(unit @ unit.T), axis=1)[:, : n + 1]  # a self-query: each row lists itself first
    out = augment_database(x, ids, n=n, alpha=alpha, chunk_size=7)  # chunks that do not divide 40
    for i in range(len(x)):
        others = [j for j in np.argsort(-(unit @ unit[i])) if j != i][:n]
        np.testing.assert_allclose(out[i], _reference(x[i], [x[j] for j in others], alpha), atol=1e-5)


def test_augment_database_skips_self_wherever_it_is_listed() -> None:
    x = np.eye(4)[:, :3] + 0.1  # 4 rows, 3-d
    ids = np.array([[1, 0, 2], [1, 2, 3], [3, 0, 2], [0, 1, 3]])  # row 1 self first, row 3 self last, row 0 middle
    got = augment_database(x, ids, n=2, alpha=1.0)
    want = augment_database(x, np.array([[1, 2], [2, 3], [3, 0], [0, 1]]), n=2, alpha=1.0)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_augment_database_needs_n_other_neighbours() -> None:
    with pytest.raises(ValueError, match="fewer than n=2"):
        augment_database(np.eye(3), np.array([[0, 1], [1, 0], [2, 0]]), n=2, alpha=1.0)
    with pytest.raises(ValueError, match="n must be at least 1"):
        augment_database(np.eye(3), np.array([[1], [0], [0]]), n=0, alpha=1.0)


def _clustered(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 12))[rng.integers(0, 4, n)] + 0.5 * rng.normal(size=(n, 12))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("mode", list(RerankMode))
def test_rerank_apply_is_dba_on_the_catalog_then_aqe_against_it(mode: RerankMode) -> None:
    queries, catalog = _clustered(3, 9), _clustered(4, 30)
    q, c = Rerank(mode, neighbours=3, alpha=3.0).apply(queries, catalog)
    want_c = catalog
    if mode in (RerankMode.DATABASE_AUGMENTATION, RerankMode.BOTH):  # brute force: sort all similarities
        ids = np.argsort(-(catalog @ catalog.T), axis=1, kind="stable")[:, :4]
        want_c = augment_database(catalog, ids, n=3, alpha=3.0)
    want_q = queries
    if mode in (RerankMode.QUERY_EXPANSION, RerankMode.BOTH):
        top = np.argsort(-(queries @ want_c.T), axis=1)[:, :3]
        want_q = expand_query(queries, want_c[top], alpha=3.0)
    np.testing.assert_allclose(c, want_c, atol=1e-5)
    np.testing.assert_allclose(q, want_q, atol=1e-5)


def test_rerank_on_a_catalog_smaller_than_n_averages_what_there_is() -> None:
    catalog = _clustered(5, 3)
    _, c = Rerank(RerankMode.DATABASE_AUGMENTATION, neighbours=5, alpha=1.0).apply(catalog[:1], catalog)
    np.testing.assert_allclose(c, augment_database(catalog, np.array([[1, 2], [0, 2], [0, 1]]), n=2, alpha=1.0),
                               atol=1e-6)


def test_rerank_settings_are_read_and_checked() -> None:
    s = Settings.from_env({"LOOKALIKE_RERANK": "query_expansion", "LOOKALIKE_RERANK_NEIGHBOURS": "3",
                           "LOOKALIKE_RERANK_ALPHA": "0"})
    assert Rerank.from_settings(s) == Rerank(RerankMode.QUERY_EXPANSION, 3, 0.0)
    with pytest.raises(ConfigError, match="LOOKALIKE_RERANK_NEIGHBOURS"):
        Settings(rerank_neighbours=0)
    with pytest.raises(ConfigError, match="LOOKALIKE_RERANK_ALPHA"):
        Settings(rerank_alpha=float("nan"))
