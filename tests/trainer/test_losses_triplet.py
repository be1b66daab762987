"""TripletLoss against a brute-force reference: explicit loops over triplets.

The reference builds the loss term by term from ``torch.linalg.vector_norm`` of
row differences in float64, so it also gives reference gradients (on batches
without duplicate rows, where that norm is differentiable).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from tests.trainer.references import CASES, make_batch, ref_valid_triplets
from trainer.losses import TripletLoss
from trainer.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletBlock, TripletIndices


def ref_d(x: torch.Tensor, i: int, j: int, squared: bool) -> torch.Tensor:
    d = torch.linalg.vector_norm(x[i] - x[j])
    return d * d if squared else d


def ref_loss(
    x: torch.Tensor, triplets: list[tuple[int, int, int]], margin: float, squared: bool, soft: bool
) -> tuple[torch.Tensor, int]:
    """Mean over active hinge terms (or over all softplus terms), with explicit loops."""
    terms = []
    active = 0
    for a, p, n in triplets:
        v = ref_d(x, a, p, squared) - ref_d(x, a, n, squared) + margin
        active += int(v.item() > 0)
        terms.append(F.softplus(v) if soft else torch.clamp(v, min=0))
    if not terms:
        return x.sum() * 0, 0
    if soft:
        return torch.stack(terms).mean(), active
    return (torch.stack(terms).sum() / active if active else x.sum() * 0), active


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.3])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_all_triplets_loss_matches_brute_force(case: str, margin: float, squared: bool, soft: bool) -> None:
    x, labels = make_batch(case)
    out = TripletLoss(margin=margin, squared=squared, soft_margin=soft)(x, labels)
    triplets = ref_valid_triplets(labels)
    expected, active = ref_loss(x.detach(), triplets, margin, squared, soft)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert out.total == len(triplets)
    if case != "duplicates" or margin > 0:  # exact ties at margin 0 may count either way
        assert out.active == active
    out.loss.backward()
    assert torch.isfinite(x.grad).all()
    if case == "random":
        grad = x.grad.clone()
        x.grad = None
        ref_loss(x, triplets, margin, squared, soft)[0].backward()
        assert torch.allclose(grad, x.grad, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("squared", [False, True])
def test_batch_hard_loss_matches_brute_force(case: str, squared: bool) -> None:
    x, labels = make_batch(case, seed=1)
    margin = 0.3
    out = TripletLoss(margin, squared=squared, miner=BatchHardMiner(margin, squared=squared))(x, labels)
    b = len(labels)
    terms = []
    for a in range(b):
        pos = [ref_d(x, a, p, squared).item() for p in range(b) if p != a and labels[p] == labels[a]]
        neg = [ref_d(x, a, n, squared).item() for n in range(b) if labels[n] != labels[a]]
        if pos and neg:
            terms.append(max(0.0, max(pos) - min(neg) + margin))
    active = [t for t in terms if t > 0]
    assert out.total == len(terms) == out.mining.selected
    assert out.active == len(active) == out.mining.active
    assert out.loss.item() == pytest.approx(sum(active) / len(active) if active else 0.0, abs=1e-12)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("squared", [False, True])
def test_semi_hard_loss_matches_brute_force(case: str, squared: bool) -> None:
    x, labels = make_batch(case, seed=2)
    margin = 0.5
    out = TripletLoss(margin, squared=squared, miner=SemiHardMiner(margin, squared=squared))(x, labels)
    # FaceNet selection: per (a, p), the closest negative with d(a,p) < d(a,n) < d(a,p) + m.
    best: dict[tuple[int, int], float] = {}
    for a, p, n in ref_valid_triplets(labels):
        dp, dn = ref_d(x, a, p, squared).item(), ref_d(x, a, n, squared).item()
        if dp + 1e-9 < dn < dp + margin:
            best[(a, p)] = min(best.get((a, p), math.inf), dn - dp)
    terms = [margin - gap for gap in best.values()]
    assert out.total == len(terms) == out.active
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms) if terms else 0.0, abs=1e-12)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("soft", [False, True])
def test_row_form_and_index_form_give_the_same_loss_and_gradient(soft: bool) -> None:
    x, labels = make_batch("duplicates", seed=5)
    loss = TripletLoss(0.3, soft_margin=soft)
    block, _ = BatchAllMiner(0.3, only_active=False).select(torch.cdist(x.detach(), x.detach()), labels)
    results = []
    for triplets in (block, block.to_indices()):
        out = loss(x, triplets=triplets)
        out.loss.backward()
        results.append((out.loss.item(), out.active, out.total, x.grad.clone()))
        x.grad = None
    (l1, a1, t1, g1), (l2, a2, t2, g2) = results
    assert l1 == pytest.approx(l2, abs=1e-12) and (a1, t1) == (a2, t2)
    assert torch.allclose(g1, g2, atol=1e-12) and torch.isfinite(g1).all()


@pytest.mark.parametrize("miner_margin", [0.1, 0.6])
def test_a_miner_with_another_margin_selects_and_the_loss_margin_scores(miner_margin: float) -> None:
    x, labels = make_batch("random", seed=6, batch=12)
    mined = BatchAllMiner(miner_margin)(x.detach(), labels).indices
    expected, active = ref_loss(x.detach(), list(zip(*[t.tolist() for t in mined])), 0.3, False, False)
    out = TripletLoss(0.3, miner=BatchAllMiner(miner_margin))(x, labels)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert (out.active, out.total) == (active, len(mined.anchor))
    assert 0 < active <= out.total


def test_batch_all_miner_gives_the_same_loss_as_no_miner() -> None:
    # Inactive triplets add nothing to a mean over active ones, so pre-filtering them is free.
    x, labels = make_batch("random", seed=3, batch=14)
    plain = TripletLoss(0.3)(x, labels)
    mined = TripletLoss(0.3, miner=BatchAllMiner(0.3))(x, labels)
    assert mined.loss.item() == pytest.approx(plain.loss.item(), abs=1e-12)
    assert mined.active == plain.active == mined.mining.active
    assert mined.total == plain.active and plain.total == mined.mining.candidates


@pytest.mark.parametrize("squared", [False, True])
def test_explicit_triplets_and_rows_match_brute_force(squared: bool) -> None:
    x, _ = make_batch("random", seed=4)
    triplets = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 0, 4), (2, 2, 2)]
    expected, active = ref_loss(x.detach(), triplets, 0.4, squared, False)
    a, p, n = (torch.tensor(t) for t in zip(*triplets))
    loss = TripletLoss(0.4, squared=squared)
    by_index = loss(x, triplets=TripletIndices(a, p, n))
    by_rows = loss.forward_triplets(x[a], x[p], x[n])
    for out in (by_index, by_rows):
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
        assert (out.active, out.total) == (active, len(triplets))
    by_rows.loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", ["single_class", "singletons"])
def test_no_valid_triplet_gives_a_zero_loss_that_backpropagates(case: str) -> None:
    x, labels = make_batch(case)
    for loss in (TripletLoss(0.2), TripletLoss(0.2, soft_margin=True), TripletLoss(0.2, miner=SemiHardMiner(0.2))):
        out = loss(x, labels)
        assert out.loss.item() == 0.0 and (out.active, out.total) == (0, 0)
        out.loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


def test_margin_zero_on_a_collapsed_batch_is_zero_not_nan() -> None:
    x = torch.ones(6, 3, requires_grad=True)
    out = TripletLoss(0.0, miner=BatchHardMiner(0.0))(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert out.loss.item() == 0.0 and out.total == 6 and out.active == 0
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_bad_configuration_and_input_are_reported() -> None:
    x, labels = make_batch("random")
    with pytest.raises(ValueError, match="give both the same `squared`"):
        TripletLoss(0.2, squared=True, miner=SemiHardMiner(0.2, squared=False))
    with pytest.raises(TypeError, match="TripletMiner"):
        TripletLoss(miner=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs labels or explicit triplets"):
        TripletLoss()(x)
    with pytest.raises(IndexError, match="out of range for a batch of 10"):
        TripletLoss()(x, triplets=TripletIndices(torch.tensor([0]), torch.tensor([1]), torch.tensor([10])))
    with pytest.raises(ValueError, match="equal lengths"):
        TripletLoss()(x, triplets=TripletIndices(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2])))
    with pytest.raises(ValueError, match="mask must be boolean"):
        block = TripletBlock(torch.tensor([0]), torch.tensor([1]), torch.ones(1, 9, dtype=torch.bool))
        TripletLoss()(x, triplets=block)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        TripletLoss(margin=float("nan"))
