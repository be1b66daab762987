"""ContrastiveLoss against a brute-force reference: explicit loops over pairs.

Convention (docs/ARCHITECTURE.md, "Losses"): Y = 0 similar, Y = 1 dissimilar,
L = (1 - Y) D^2 + Y max(0, m - D)^2, averaged over the non-zero terms.
"""

from __future__ import annotations

import pytest
import torch

from tests.trainer.references import CASES, make_batch
from trainer.losses import ContrastiveLoss
from trainer.miners import HardPairMiner, PairIndices, PairStrategy


def ref_term(x: torch.Tensor, i: int, j: int, y: int, margin: float) -> torch.Tensor:
    d = torch.linalg.vector_norm(x[i] - x[j])
    return (1 - y) * d**2 + y * torch.clamp(margin - d, min=0) ** 2


def ref_mean_active(terms: list[torch.Tensor], anchor: torch.Tensor) -> tuple[torch.Tensor, int]:
    active = [t for t in terms if t.item() > 0]
    if not active:
        return anchor.sum() * 0, 0
    return torch.stack(active).sum() / len(active), len(active)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("margin", [0.0, 0.8, 1.5])
def test_all_pairs_loss_matches_brute_force(case: str, margin: float) -> None:
    x, labels = make_batch(case)
    out = ContrastiveLoss(margin)(x, labels)
    b = len(labels)
    pairs = [(i, j, int(labels[i] != labels[j])) for i in range(b) for j in range(i + 1, b)]
    expected, active = ref_mean_active([ref_term(x.detach(), i, j, y, margin) for i, j, y in pairs], x)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert (out.active, out.total) == (active, len(pairs))
    out.loss.backward()
    assert torch.isfinite(x.grad).all()
    if case == "random":
        grad = x.grad.clone()
        x.grad = None
        ref_mean_active([ref_term(x, i, j, y, margin) for i, j, y in pairs], x)[0].backward()
        assert torch.allclose(grad, x.grad, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_active_pair_miner_gives_the_same_loss_as_all_pairs(case: str) -> None:
    # Pairs with a zero loss add nothing to a mean over active ones.
    x, labels = make_batch(case, seed=1)
    plain = ContrastiveLoss(0.8)(x, labels)
    mined = ContrastiveLoss(0.8, miner=HardPairMiner(0.8))(x, labels)
    assert mined.loss.item() == pytest.approx(plain.loss.item(), abs=1e-12)
    assert mined.active == plain.active == mined.total
    assert mined.mining.candidates == plain.total


@pytest.mark.parametrize("case", CASES)
def test_hardest_pair_loss_matches_brute_force(case: str) -> None:
    x, labels = make_batch(case, seed=2)
    margin = 0.8
    out = ContrastiveLoss(margin, miner=HardPairMiner(margin, strategy=PairStrategy.HARDEST))(x, labels)
    b = len(labels)
    terms = []
    xd = x.detach()
    for a in range(b):
        pos = [ref_term(xd, a, j, 0, margin) for j in range(b) if j != a and labels[j] == labels[a]]
        neg = [ref_term(xd, a, j, 1, margin) for j in range(b) if labels[j] != labels[a]]
        terms += [max(pos, key=float)] if pos else []
        terms += [max(neg, key=float)] if neg else []  # closest negative = largest hinge
    expected, active = ref_mean_active(terms, x)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert out.active == active
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_explicit_labelled_pairs_match_brute_force() -> None:
    x, _ = make_batch("duplicates", seed=3)
    i = torch.tensor([0, 0, 2, 4, 5, 9, 6])
    j = torch.tensor([1, 3, 7, 8, 5, 2, 7])
    y = torch.tensor([0, 1, 0, 1, 1, 1, 0])  # includes D = 0 with Y = 0, Y = 1, and a self-pair
    margin = 0.9
    terms = [ref_term(x.detach(), a, b, c, margin) for a, b, c in zip(i.tolist(), j.tolist(), y.tolist())]
    expected, active = ref_mean_active(terms, x)
    loss = ContrastiveLoss(margin)
    by_rows = loss.forward_pairs(x[i], x[j], y)
    by_index = loss(x, pairs=PairIndices(i[y == 0], j[y == 0], i[y == 1], j[y == 1]))
    for out in (by_rows, by_index):
        assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
        assert (out.active, out.total) == (active, 7)
        out.loss.backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None


def test_no_pairs_or_no_active_pair_gives_a_zero_loss_that_backpropagates() -> None:
    x = torch.zeros(1, 3, requires_grad=True)
    out = ContrastiveLoss(1.0)(x, torch.tensor([4]))
    assert (out.loss.item(), out.active, out.total) == (0.0, 0, 0)
    out.loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # Collapsed similar pairs, margin 0: every term is 0.
    x = torch.ones(4, 3, requires_grad=True)
    out = ContrastiveLoss(0.0)(x, torch.tensor([0, 0, 1, 1]))
    assert (out.loss.item(), out.active, out.total) == (0.0, 0, 6)
    out.loss.backward()
    assert torch.isfinite(x.grad).all()


def test_bad_input_is_reported() -> None:
    x, labels = make_batch("random")
    loss = ContrastiveLoss(1.0)
    with pytest.raises(ValueError, match="only 0 \\(similar pair\\) and 1"):
        loss.forward_pairs(x[:2], x[2:4], torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="length 2"):
        loss.forward_pairs(x[:2], x[2:4], torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="needs labels or explicit pairs"):
        loss(x)
    with pytest.raises(ValueError, match="equal lengths"):
        empty = torch.tensor([], dtype=torch.long)
        loss(x, pairs=PairIndices(torch.tensor([0, 1]), torch.tensor([2]), empty, empty))
    with pytest.raises(TypeError, match="PairMiner"):
        ContrastiveLoss(miner=object())  # type: ignore[arg-type]
