"""Every miner against a brute-force reference with explicit Python loops.

Embeddings are float64 so the vectorised distances and the references agree to
rounding.  Duplicate embeddings make exact ties: a tied index is compared by its
distance value (any of them is a correct pick), and a tuple sitting exactly on
a strict boundary (e.g. d(a,p) == d(a,n) with margin 0) may go either way, so
the references give a *strict* set (must be returned) and a *loose* set (may be).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer.references import ref_valid_triplets
from trainer.miners import (
    BatchAllMiner,
    BatchHardMiner,
    HardPairMiner,
    PairStrategy,
    SemiHardMiner,
    SemiHardMode,
    TripletBlock,
    TripletIndices,
)

TOL = 1e-9


def make_batch(case: str, seed: int = 0, batch: int = 12, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    if case == "random":
        labels = torch.randint(0, 4, (batch,), generator=g)
    elif case == "single_class":
        labels = torch.zeros(batch, dtype=torch.long)
    elif case == "singletons":
        labels = torch.arange(batch)
    elif case == "duplicates":
        labels = torch.randint(0, 3, (batch,), generator=g)
        x[1] = x[0]  # duplicate inside a class or across classes, both happen with seeds
        x[5] = x[4]
        x[7] = x[2]
        labels[4] = labels[5]
    else:
        raise AssertionError(case)
    return x, labels


CASES = ["random", "single_class", "singletons", "duplicates"]


def ref_dist(x: torch.Tensor, i: int, j: int, squared: bool) -> float:
    d = math.dist(x[i].tolist(), x[j].tolist())
    return d * d if squared else d


def as_set(t: TripletIndices) -> set[tuple[int, int, int]]:
    return set(zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("squared", [False, True])
def test_batch_all_matches_brute_force(case: str, margin: float, squared: bool) -> None:
    x, labels = make_batch(case)
    mined = BatchAllMiner(margin=margin, squared=squared)(x, labels)
    valid = ref_valid_triplets(labels)
    violation = {t: ref_dist(x, t[0], t[1], squared) - ref_dist(x, t[0], t[2], squared) + margin for t in valid}
    strict = {t for t, v in violation.items() if v > TOL}
    loose = {t for t, v in violation.items() if v > -TOL}
    got = as_set(mined.indices)
    assert strict <= got <= loose
    assert len(got) == mined.stats.selected == mined.stats.active
    assert mined.stats.candidates == len(valid)
    # Sorted by (anchor, positive, negative), like pytorch-metric-learning.
    assert list(zip(*[t.tolist() for t in mined.indices])) == sorted(got)

    everything = BatchAllMiner(margin=margin, squared=squared, only_active=False)(x, labels)
    assert as_set(everything.indices) == set(valid)
    assert everything.stats.active == mined.stats.selected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_matches_brute_force(case: str, squared: bool) -> None:
    x, labels = make_batch(case, seed=1)
    margin = 0.3
    mined = BatchHardMiner(margin=margin, squared=squared)(x, labels)
    b = len(labels)
    expected: dict[int, tuple[float, float]] = {}
    for a in range(b):
        pos = [ref_dist(x, a, p, squared) for p in range(b) if p != a and labels[p] == labels[a]]
        neg = [ref_dist(x, a, n, squared) for n in range(b) if labels[n] != labels[a]]
        if pos and neg:
            expected[a] = (max(pos), min(neg))
    a_idx, p_idx, n_idx = (t.tolist() for t in mined.indices)
    assert a_idx == sorted(expected)
    for a, p, n in zip(a_idx, p_idx, n_idx):
        assert p != a and labels[p] == labels[a] and labels[n] != labels[a]
        assert ref_dist(x, a, p, squared) == pytest.approx(expected[a][0], abs=TOL)
        assert ref_dist(x, a, n, squared) == pytest.approx(expected[a][1], abs=TOL)
    active = sum(1 for dp, dn in expected.values() if dp - dn + margin > TOL)
    assert mined.stats.active == active
    assert mined.stats.selected == len(expected)
    if expected:
        assert mined.stats.mean_ap == pytest.approx(sum(v[0] for v in expected.values()) / len(expected))
        assert mined.stats.mean_an == pytest.approx(sum(v[1] for v in expected.values()) / len(expected))
    else:
        assert mined.stats.mean_ap is None and mined.stats.mean_an is None


def ref_semi_hard(
    x: torch.Tensor, labels: torch.Tensor, margin: float, squared: bool
) -> tuple[set[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """(strict, loose) sets of triplets with d(a,p) < d(a,n) < d(a,p) + margin."""
    strict, loose = set(), set()
    for a, p, n in ref_valid_triplets(labels):
        dp, dn = ref_dist(x, a, p, squared), ref_dist(x, a, n, squared)
        if dp + TOL < dn < dp + margin - TOL:
            strict.add((a, p, n))
        if dp - TOL < dn < dp + margin + TOL and margin > 0:
            loose.add((a, p, n))
    return strict, loose


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("squared", [False, True])
def test_semi_hard_all_matches_brute_force(case: str, margin: float, squared: bool) -> None:
    x, labels = make_batch(case, seed=2)
    mined = SemiHardMiner(margin=margin, squared=squared, mode=SemiHardMode.ALL)(x, labels)
    strict, loose = ref_semi_hard(x, labels, margin, squared)
    got = as_set(mined.indices)
    assert strict <= got <= loose
    assert mined.stats.active == mined.stats.selected == len(got)
    assert mined.stats.candidates == len(ref_valid_triplets(labels))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("method", ["dense", "sorted"])
def test_semi_hard_hardest_matches_brute_force(case: str, margin: float, squared: bool, seed: int, method: str) -> None:
    x, labels = make_batch(case, seed=seed)
    miner = SemiHardMiner(margin=margin, squared=squared, mode=SemiHardMode.HARDEST)
    # Force one of the two exact methods (the miner picks by cost otherwise).
    miner.DENSE_MAX_POSITIVES_PER_ANCHOR = 10**9 if method == "dense" else -1
    mined = miner(x, labels)
    # Reference: for each (a, p), the smallest d(a, n) among its semi-hard negatives.
    strict, loose = ref_semi_hard(x, labels, margin, squared)
    best: dict[tuple[int, int], float] = {}
    for a, p, n in strict:
        best[(a, p)] = min(ref_dist(x, a, n, squared), best.get((a, p), math.inf))
    got = list(zip(*[t.tolist() for t in mined.indices]))
    pairs = [(a, p) for a, p, _ in got]
    assert pairs == sorted(set(pairs)), "one triplet per (anchor, positive), sorted"
    assert set(best) <= set(pairs) <= {(a, p) for a, p, _ in loose}
    for a, p, n in got:
        assert (a, p, n) in loose
        assert ref_dist(x, a, n, squared) <= best.get((a, p), math.inf) + TOL
    assert mined.stats.selected == len(got)


@pytest.mark.parametrize("classes", [4, 60])  # many positives per anchor (sorted method) / few (dense)
def test_semi_hard_hardest_on_a_large_batch_matches_the_all_mode(classes: int) -> None:
    # Every hardest pick is one of the "all" triplets and has the minimum d(a, n) of its (a, p).
    x, labels = make_batch("random", seed=5, batch=200, dim=8)
    labels = torch.randint(0, classes, (200,), generator=torch.Generator().manual_seed(5))
    dist = torch.cdist(x, x)
    hardest = SemiHardMiner(margin=0.4, mode="hardest")(x, labels).indices
    every = SemiHardMiner(margin=0.4, mode="all")(x, labels).indices
    minimum: dict[tuple[int, int], float] = {}
    for a, p, n in zip(*[t.tolist() for t in every]):
        minimum[(a, p)] = min(minimum.get((a, p), math.inf), dist[a, n].item())
    got = list(zip(*[t.tolist() for t in hardest]))
    assert {(a, p) for a, p, _ in got} == set(minimum)
    assert len(got) == len(minimum)
    for a, p, n in got:
        assert dist[a, n].item() == pytest.approx(minimum[(a, p)], abs=TOL)


def ref_pairs(labels: torch.Tensor) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    b = len(labels)
    pos = [(i, j) for i in range(b) for j in range(i + 1, b) if labels[i] == labels[j]]
    neg = [(i, j) for i in range(b) for j in range(i + 1, b) if labels[i] != labels[j]]
    return pos, neg


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.9])
@pytest.mark.parametrize("pos_threshold", [0.0, 0.6])
def test_hard_pair_active_matches_brute_force(case: str, margin: float, pos_threshold: float) -> None:
    x, labels = make_batch(case, seed=6)
    mined = HardPairMiner(margin=margin, pos_threshold=pos_threshold)(x, labels)
    pos, neg = ref_pairs(labels)
    strict_pos = {(i, j) for i, j in pos if ref_dist(x, i, j, False) > pos_threshold + TOL}
    loose_pos = {(i, j) for i, j in pos if ref_dist(x, i, j, False) > pos_threshold - TOL}
    strict_neg = {(i, j) for i, j in neg if ref_dist(x, i, j, False) < margin - TOL}
    loose_neg = {(i, j) for i, j in neg if ref_dist(x, i, j, False) < margin + TOL}
    a1, p, a2, n = (t.tolist() for t in mined.indices)
    assert strict_pos <= set(zip(a1, p)) <= loose_pos and len(a1) == len(set(zip(a1, p)))
    assert strict_neg <= set(zip(a2, n)) <= loose_neg and len(a2) == len(set(zip(a2, n)))
    assert mined.stats.candidates == len(pos) + len(neg)
    assert mined.stats.selected == len(a1) + len(a2)


@pytest.mark.parametrize("case", CASES)
def test_hard_pair_hardest_matches_brute_force(case: str) -> None:
    x, labels = make_batch(case, seed=7)
    margin = 0.9
    mined = HardPairMiner(margin=margin, strategy=PairStrategy.HARDEST)(x, labels)
    b = len(labels)
    exp_pos: dict[int, float] = {}
    exp_neg: dict[int, float] = {}
    for a in range(b):
        pos = [ref_dist(x, a, j, False) for j in range(b) if j != a and labels[j] == labels[a]]
        neg = [ref_dist(x, a, j, False) for j in range(b) if labels[j] != labels[a]]
        if pos and max(pos) > TOL:
            exp_pos[a] = max(pos)
        if neg and min(neg) < margin - TOL:
            exp_neg[a] = min(neg)
    a1, p, a2, n = (t.tolist() for t in mined.indices)
    assert a1 == sorted(exp_pos) and a2 == sorted(exp_neg)
    for a, j in zip(a1, p):
        assert labels[j] == labels[a] and ref_dist(x, a, j, False) == pytest.approx(exp_pos[a], abs=TOL)
    for a, j in zip(a2, n):
        assert labels[j] != labels[a] and ref_dist(x, a, j, False) == pytest.approx(exp_neg[a], abs=TOL)


def test_miners_accept_a_precomputed_matrix_and_reject_bad_input() -> None:
    x, labels = make_batch("random")
    dist = torch.cdist(x, x)
    assert as_set(BatchAllMiner().mine(dist, labels).indices) == as_set(BatchAllMiner()(x, labels).indices)
    by_matrix, by_embeddings = HardPairMiner(0.9).mine(dist, labels), HardPairMiner(0.9)(x, labels)
    assert [t.tolist() for t in by_matrix.indices] == [t.tolist() for t in by_embeddings.indices]
    assert by_matrix.stats.mean_an == pytest.approx(by_embeddings.stats.mean_an)
    with pytest.raises(ValueError, match="labels must be a 1-D tensor of length 12"):
        BatchHardMiner()(x, labels[:-1])
    with pytest.raises(TypeError, match="integer class ids"):
        BatchHardMiner()(x, labels.double())
    with pytest.raises(ValueError, match="square"):
        BatchHardMiner().mine(dist[:, :5], labels)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        SemiHardMiner(margin=-0.1)
    with pytest.raises(ValueError, match="'sometimes' is not a valid SemiHardMode"):
        SemiHardMiner(mode="sometimes")
    with pytest.raises(ValueError, match="2-D"):
        BatchAllMiner()(x[0], labels)


@pytest.mark.parametrize(
    "miner", [BatchAllMiner(0.3), BatchAllMiner(0.3, only_active=False), SemiHardMiner(0.3, mode="all")]
)
def test_row_form_selection_expands_to_the_mined_indices(miner) -> None:
    x, labels = make_batch("random", seed=8)
    dist = torch.cdist(x, x)
    block, stats = miner.select(dist, labels)
    assert isinstance(block, TripletBlock)
    mined = miner.mine(dist, labels)
    assert [t.tolist() for t in block.to_indices()] == [t.tolist() for t in mined.indices]
    assert stats == mined.stats
    # Stats of the row form against the expanded triplets.
    a, p, n = mined.indices
    assert stats.selected == len(a) > 0
    assert stats.mean_ap == pytest.approx(dist[a, p].mean().item())
    assert stats.mean_an == pytest.approx(dist[a, n].mean().item())
    assert stats.active == int((dist[a, p] - dist[a, n] + 0.3 > 0).sum())
