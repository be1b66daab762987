"""Agreement with pytorch-metric-learning 2.9.0 (test-only dependency) where the
definitions coincide.

Correspondences (PML side in brackets):

- Distance: ours is Euclidean on the embeddings as given
  [``LpDistance(normalize_embeddings=False)``; PML L2-normalises by default].
  Our ``squared=True`` is [``LpDistance(power=2)``].
- ``TripletLoss(m, squared)`` = [``TripletMarginLoss(margin=m)`` with its
  default ``AvgNonZeroReducer`` and power 1 / 2]; ``soft_margin`` =
  [``smooth_loss=True``] (softplus is never 0, so both average over all triplets).
- ``BatchAllMiner(m)`` = [``TripletMarginMiner(m, "all")``] and
  ``SemiHardMiner(m, mode=ALL)`` = [``TripletMarginMiner(m, "semihard")``], except
  at exact boundary ties (PML keeps ``d(a,n) == d(a,p) + m``, whose loss is 0;
  random data has none).
- ``SemiHardMiner(mode=HARDEST)`` has no PML twin: PML's closest is
  [``BatchEasyHardMiner("hard", "semihard")``], which keeps only the hardest
  positive per anchor and has no upper bound on d(a,n); restricted to that
  positive and to d(a,n) < d(a,p) + m, the two must agree.
- ``BatchHardMiner`` = [``BatchHardMiner``].
- ``HardPairMiner(m)`` = [``PairMarginMiner(pos_margin=0, neg_margin=m)``] up
  to order: PML returns ordered pairs (i, j) and (j, i), we return i < j.
- ``ContrastiveLoss(m)`` is NOT PML's [``ContrastiveLoss(pos_margin=0, neg_margin=m)``]:
  PML's terms are ``relu(D - 0)`` and ``relu(m - D)`` (not squared), and its
  reducer averages positive and negative pairs separately and adds the two means.
  The per-pair terms coincide piecewise: our ``D^2`` is PML's positive term with
  ``LpDistance(power=2)``, our ``max(0, m - D)^2`` is the square of PML's
  negative term with power 1 (per-pair values via ``DoNothingReducer``); and on
  a single-class batch (no negative pairs) the whole losses coincide.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.miners import (
    BatchAllMiner,
    BatchHardMiner,
    HardPairMiner,
    PairStrategy,
    SemiHardMiner,
    SemiHardMode,
    TripletIndices,
)

ATOL = 1e-10


def lp(power: int = 1) -> pml_distances.LpDistance:
    return pml_distances.LpDistance(normalize_embeddings=False, p=2, power=power)


def make_batch(seed: int, batch: int = 48, classes: int = 6, dim: int = 8, duplicates: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, classes, (batch,), generator=g)
    if duplicates:
        x[1] = x[0]
        x[3] = x[2]
    return x.requires_grad_(), labels


def triplet_set(t) -> set[tuple[int, int, int]]:
    return set(zip(*[i.tolist() for i in t]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_triplet_loss_over_all_triplets_equals_pml(seed: int, margin: float, squared: bool, soft: bool) -> None:
    x, labels = make_batch(seed, duplicates=seed == 1)
    ours = TripletLoss(margin, squared=squared, soft_margin=soft)(x, labels)
    ours.loss.backward()
    our_grad = x.grad.clone()
    x.grad = None
    theirs = pml_losses.TripletMarginLoss(margin=margin, smooth_loss=soft, distance=lp(2 if squared else 1))(x, labels)
    theirs.backward()
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=ATOL)
    if seed == 0:  # PML's cdist backward at exactly-0 distances differs from ours; elsewhere equal
        assert torch.allclose(our_grad, x.grad, atol=1e-9)


@pytest.mark.parametrize("seed", [2, 3])
@pytest.mark.parametrize("margin", [0.1, 0.3])
def test_batch_all_miner_equals_pml_triplet_margin_miner_all(seed: int, margin: float) -> None:
    x, labels = make_batch(seed)
    ours = BatchAllMiner(margin)(x, labels).indices
    theirs = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="all", distance=lp())(x, labels)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]  # same set, same order


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("margin", [0.1, 0.3])
@pytest.mark.parametrize("squared", [False, True])
def test_semi_hard_all_mode_equals_pml_semihard_miner_and_loss(seed: int, margin: float, squared: bool) -> None:
    x, labels = make_batch(seed)
    power = 2 if squared else 1
    ours = SemiHardMiner(margin, squared=squared, mode=SemiHardMode.ALL)(x, labels).indices
    theirs = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=lp(power))(x, labels)
    assert triplet_set(ours) == triplet_set(theirs) and len(ours.anchor) == len(theirs[0]) > 0
    our_loss = TripletLoss(margin, squared=squared, miner=SemiHardMiner(margin, squared=squared, mode="all"))(x, labels)
    their_loss = pml_losses.TripletMarginLoss(margin=margin, distance=lp(power))(x, labels, theirs)
    assert our_loss.loss.item() == pytest.approx(their_loss.item(), abs=ATOL)


@pytest.mark.parametrize("seed", [6, 7])
def test_semi_hard_hardest_mode_agrees_with_pml_easy_hard_miner_on_the_hardest_positive(seed: int) -> None:
    x, labels = make_batch(seed)
    margin = 0.4
    dist = torch.cdist(x.detach(), x.detach())
    a, p, _, n = pml_miners.BatchEasyHardMiner(pos_strategy="hard", neg_strategy="semihard", distance=lp())(x, labels)
    inside = dist[a, n] < dist[a, p] + margin
    theirs = set(zip(a[inside].tolist(), p[inside].tolist(), n[inside].tolist()))
    hardest_positive = dict(zip(a.tolist(), p.tolist()))
    ours = {
        (i, j, k)
        for i, j, k in triplet_set(SemiHardMiner(margin)(x, labels).indices)
        if hardest_positive.get(i) == j
    }
    assert ours == theirs and len(ours) > 0


@pytest.mark.parametrize("seed", [8, 9])
@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_miner_and_loss_equal_pml(seed: int, squared: bool) -> None:
    x, labels = make_batch(seed, classes=8)
    labels[0] = 99  # an anchor without positives: skipped by both
    margin = 0.3
    power = 2 if squared else 1
    ours = BatchHardMiner(margin, squared=squared)(x, labels).indices
    theirs = pml_miners.BatchHardMiner(distance=lp(power))(x, labels)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]
    assert 0 not in ours.anchor.tolist()
    our_loss = TripletLoss(margin, squared=squared, miner=BatchHardMiner(margin, squared=squared))(x, labels)
    their_loss = pml_losses.TripletMarginLoss(margin=margin, distance=lp(power))(x, labels, theirs)
    assert our_loss.loss.item() == pytest.approx(their_loss.item(), abs=ATOL)
    # Explicit triplets take the same path.
    explicit = TripletLoss(margin, squared=squared)(x, triplets=TripletIndices(*theirs))
    assert explicit.loss.item() == pytest.approx(their_loss.item(), abs=ATOL)


def unordered(a: torch.Tensor, b: torch.Tensor) -> set[tuple[int, int]]:
    return {(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())}


@pytest.mark.parametrize("seed", [10, 11])
@pytest.mark.parametrize("margin", [0.9, 1.2])
def test_hard_pair_miner_equals_pml_pair_margin_miner(seed: int, margin: float) -> None:
    x, labels = make_batch(seed)
    a1, p, a2, n = HardPairMiner(margin)(x, labels).indices
    t1, tp, t2, tn = pml_miners.PairMarginMiner(pos_margin=0.0, neg_margin=margin, distance=lp())(x, labels)
    assert unordered(a1, p) == unordered(t1, tp) and 2 * len(a1) == len(t1)
    assert unordered(a2, n) == unordered(t2, tn) and 2 * len(a2) == len(t2) > 0


@pytest.mark.parametrize("seed", [12, 13])
def test_hardest_pair_strategy_agrees_with_pml_batch_easy_hard_miner(seed: int) -> None:
    x, labels = make_batch(seed)
    margin = 0.8
    a, p, _, n = pml_miners.BatchEasyHardMiner(pos_strategy="hard", neg_strategy="hard", distance=lp())(x, labels)
    dist = torch.cdist(x.detach(), x.detach())
    both = set(a.tolist())  # PML keeps anchors with a positive and a negative
    a1, p1, a2, n1 = HardPairMiner(margin, strategy=PairStrategy.HARDEST)(x, labels).indices
    assert {(i, j) for i, j in zip(a1.tolist(), p1.tolist()) if i in both} == set(zip(a.tolist(), p.tolist()))
    active_neg = dist[a, n] < margin
    assert {(i, j) for i, j in zip(a2.tolist(), n1.tolist()) if i in both} == set(
        zip(a[active_neg].tolist(), n[active_neg].tolist())
    )


@pytest.mark.parametrize("seed", [14, 15])
@pytest.mark.parametrize("margin", [0.0, 0.7, 1.2])
def test_contrastive_per_pair_terms_coincide_with_pml(seed: int, margin: float) -> None:
    x, labels = make_batch(seed, duplicates=seed == 15)

    def pml_terms(power: int) -> dict:
        loss = pml_losses.ContrastiveLoss(
            pos_margin=0.0, neg_margin=margin, distance=lp(power), reducer=pml_reducers.DoNothingReducer()
        )
        return loss(x, labels)

    pos = pml_terms(2)["pos_loss"]["losses"]  # D^2 over ordered positive pairs
    neg = pml_terms(1)["neg_loss"]["losses"] ** 2  # relu(m - D)^2 over ordered negative pairs
    # Every unordered pair appears twice in PML's ordered lists; a mean over active terms is unchanged.
    terms = torch.cat([pos, neg])
    expected = terms[terms > 0].mean() if (terms > 0).any() else torch.tensor(0.0)
    ours = ContrastiveLoss(margin)(x, labels)
    # torch.cdist's matmul path puts duplicates ~1e-8 apart instead of 0 (we snap to 0),
    # which moves a (m - D)^2 term by ~1e-8.
    assert ours.loss.item() == pytest.approx(expected.item(), abs=1e-7 if seed == 15 else ATOL)
    assert 2 * ours.active == int((terms > 0).sum())


@pytest.mark.parametrize("seed", [16, 17])
def test_contrastive_loss_on_a_single_class_batch_equals_pml(seed: int) -> None:
    x, _ = make_batch(seed, batch=20)
    labels = torch.zeros(20, dtype=torch.long)
    ours = ContrastiveLoss(0.7)(x, labels)
    ours.loss.backward()
    our_grad = x.grad.clone()
    x.grad = None
    theirs = pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=0.7, distance=lp(2))(x, labels)
    theirs.backward()
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=ATOL)
    assert torch.allclose(our_grad, x.grad, atol=1e-9)
