"""Retrieval metrics against a plain-loop reference and against pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.retrieval_metrics import retrieval_metrics


def brute_force(queries, q_labels, refs=None, r_labels=None, ks=(1, 5, 10)):
    """The definitions of Musgrave et al. 2020, written as loops over queries."""
    loo = refs is None
    if loo:
        refs, r_labels = queries, q_labels
    p1 = rp = mapr = 0.0
    recall = dict.fromkeys(ks, 0.0)
    used = 0
    for i, (q, y) in enumerate(zip(queries, q_labels)):
        candidates = [j for j in range(len(refs)) if not (loo and j == i)]
        r_count = sum(1 for j in candidates if r_labels[j] == y)
        if r_count == 0:
            continue
        used += 1
        dists = [(float(np.sqrt(((q.astype(np.float64) - refs[j]) ** 2).sum())), j) for j in candidates]
        ranking = [j for _, j in sorted(dists)]
        rel = [r_labels[j] == y for j in ranking]
        p1 += rel[0]
        rp += sum(rel[:r_count]) / r_count
        ap, correct = 0.0, 0
        for pos in range(r_count):
            if rel[pos]:
                correct += 1
                ap += correct / (pos + 1)
        mapr += ap / r_count
        for k in ks:
            recall[k] += any(rel[:k])
    return {"p1": p1 / used, "rp": rp / used, "map": mapr / used,
            "recall": {k: v / used for k, v in recall.items()}, "used": used}


def _clustered(rng, n, dim, n_classes, spread):
    centres = rng.normal(size=(n_classes, dim))
    labels = rng.integers(0, n_classes, size=n)
    x = centres[labels] + spread * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_leave_one_out_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    x, y = _clustered(rng, 150, 8, 6, 1.2)
    y[0] = 99  # a lone query: no other item shares its label
    got = retrieval_metrics(x, y, chunk_size=chunk_size)
    want = brute_force(x, list(y))
    assert got.n_queries == want["used"] == 149 and got.n_lone == 1
    assert got.precision_at_1 == pytest.approx(want["p1"], abs=1e-12)
    assert got.r_precision == pytest.approx(want["rp"], abs=1e-12)
    assert got.map_at_r == pytest.approx(want["map"], abs=1e-12)
    for k in (1, 5, 10):
        assert got.recall_at_k[k] == pytest.approx(want["recall"][k], abs=1e-12)
    # the data is neither trivially perfect nor random, so the checks above have teeth
    assert 0.2 < got.map_at_r < 0.9


def test_query_reference_matches_brute_force():
    rng = np.random.default_rng(1)
    refs, r_labels = _clustered(rng, 120, 6, 5, 1.0)
    queries = refs[:40] + 0.8 * rng.normal(size=(40, 6)).astype(np.float32)
    q_labels = [f"c{v}" for v in r_labels[:40]]
    q_labels[3] = "nowhere"  # lone: no reference has it
    r_str = [f"c{v}" for v in r_labels]
    got = retrieval_metrics(queries, q_labels, refs, r_str, ks=(1, 3), chunk_size=9)
    want = brute_force(queries, q_labels, refs, r_str, ks=(1, 3))
    assert got.n_queries == 39 and got.n_lone == 1
    assert got.map_at_r == pytest.approx(want["map"], abs=1e-12)
    assert got.r_precision == pytest.approx(want["rp"], abs=1e-12)
    assert got.recall_at_k[3] == pytest.approx(want["recall"][3], abs=1e-12)
    assert got.to_dict()["recall@3"] == got.recall_at_k[3]


def test_perfect_and_worst_rankings():
    # two tight, far-apart clusters: every metric is exactly 1
    x = np.array([[0, 0], [0, 0.1], [0.1, 0], [10, 10], [10, 10.1], [10.1, 10]], dtype=np.float32)
    y = [0, 0, 0, 1, 1, 1]
    m = retrieval_metrics(x, y)
    assert (m.precision_at_1, m.r_precision, m.map_at_r) == (1.0, 1.0, 1.0)
    # every item's nearest neighbours are all of the other label: every metric is 0
    x = np.array([[0.0], [10.0], [0.1], [10.1]], dtype=np.float32)
    m = retrieval_metrics(x, [0, 0, 1, 1])
    assert (m.precision_at_1, m.r_precision, m.map_at_r) == (0.0, 0.0, 0.0)


def test_map_at_r_rewards_order_within_r():
    # query 0 has R=2 relevant items; ranks [rel, irr, rel] vs [irr, rel, rel]
    x = np.array([[0.0], [1.0], [2.0], [3.0], [50.0]], dtype=np.float32)
    y = ["a", "a", "b", "a", "b"]
    m = retrieval_metrics(x[:1], y[:1], x[1:], y[1:])
    assert m.r_precision == 0.5 and m.map_at_r == pytest.approx(0.5)  # (1/1)/2
    # same R-precision, but the relevant item comes second: MAP@R halves
    y2 = ["a", "b", "a", "a", "b"]
    m2 = retrieval_metrics(x[:1], y2[:1], x[1:], y2[1:])
    assert m2.r_precision == 0.5 and m2.map_at_r == pytest.approx(0.25)  # (1/2)/2


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="labels do not match"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="dimension mismatch"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1, 1], np.zeros((3, 4)), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 2), np.nan), [0, 1, 1])
    m = retrieval_metrics(np.eye(3, dtype=np.float32), [0, 1, 2])
    assert m.n_queries == 0 and m.n_lone == 3 and math.isnan(m.map_at_r)


def test_agrees_with_pytorch_metric_learning():
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(2)
    x, y = _clustered(rng, 300, 16, 8, 2.0)
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        device=torch.device("cpu"), knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
    )
    theirs = calc.get_accuracy(torch.from_numpy(x), torch.from_numpy(y))
    ours = retrieval_metrics(x, y, chunk_size=64)
    assert ours.precision_at_1 == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours.r_precision == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours.map_at_r == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)

    queries = x[:100] + rng.normal(size=(100, 16)).astype(np.float32)
    theirs = calc.get_accuracy(torch.from_numpy(queries), torch.from_numpy(y[:100]),
                               torch.from_numpy(x[100:]), torch.from_numpy(y[100:]))
    ours = retrieval_metrics(queries, y[:100], x[100:], y[100:])
    assert ours.map_at_r == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours.precision_at_1 == pytest.approx(theirs["precision_at_1"], abs=1e-6)
