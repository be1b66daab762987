"""The pre-mining statistic against brute force, and every loss / miner option from the config."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.references import CASES, make_batch, ref_valid_triplets
from trainer.components import build_loss
from trainer.config import ConfigError, LossConfig, LossKind, MinerKind, TrainConfig
from trainer.distances import distance_matrix
from trainer.losses import ContrastiveLoss, TripletLoss
from trainer.miners import (
    BatchAllMiner,
    BatchHardMiner,
    HardPairMiner,
    PairStrategy,
    SemiHardMiner,
    SemiHardMode,
    triplet_base,
)

TRIPLET_MINERS = [BatchAllMiner, BatchHardMiner, SemiHardMiner]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("miner_cls", TRIPLET_MINERS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("sorted_count", [False, True])
def test_violating_counts_every_valid_triplet_over_the_margin(
    case: str, miner_cls, squared: bool, sorted_count: bool, monkeypatch
) -> None:
    if sorted_count:  # the path large memories take
        monkeypatch.setattr(triplet_base, "VIOLATING_DENSE_MAX_ELEMENTS", 0)
    x, labels = make_batch(case, seed=3)
    margin = 0.4
    dist = distance_matrix(x.detach(), squared=squared)
    stats = miner_cls(margin, squared=squared).mine(dist, labels).stats
    triplets = ref_valid_triplets(labels)
    violating = sum(1 for a, p, n in triplets if dist[a, p] - dist[a, n] + margin > 0)
    assert stats.candidates == len(triplets)
    assert stats.violating == violating
    assert stats.violating_fraction == (violating / len(triplets) if triplets else 0.0)
    assert stats.selected_fraction == (stats.selected / len(triplets) if triplets else 0.0)


@pytest.mark.parametrize("case", CASES)
def test_violating_pairs_are_the_pairs_with_a_non_zero_term(case: str) -> None:
    x, labels = make_batch(case, seed=4)
    margin = 0.9
    out = ContrastiveLoss(margin, miner=HardPairMiner(margin, strategy=PairStrategy.HARDEST))(x, labels)
    dist = distance_matrix(x.detach())
    b = len(labels)
    pairs = [(i, j) for i in range(b) for j in range(i + 1, b)]
    violating = sum(1 for i, j in pairs if (dist[i, j] > 0 if labels[i] == labels[j] else dist[i, j] < margin))
    assert out.mining.candidates == len(pairs) and out.mining.violating == violating
    assert out.violating_fraction == pytest.approx(violating / len(pairs))


def test_the_statistic_falls_as_an_embedding_separates_the_classes() -> None:
    """``active_fraction`` stays 1.0 for batch-all; the violating fraction tells the learning apart."""
    labels = torch.arange(4).repeat_interleave(4)
    centres = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    noise = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    loss = TripletLoss(0.2, miner=BatchAllMiner(0.2))
    fractions = []
    for spread in (2.0, 0.5, 0.05):  # from noise to tight clusters
        x = torch.nn.functional.normalize(centres[labels] + spread * noise, dim=1)
        out = loss(x, labels)
        assert out.active_fraction in (0.0, 1.0)
        fractions.append(out.violating_fraction)
    assert fractions[0] > fractions[1] > fractions[2] == 0.0
    plain = TripletLoss(0.2)(torch.nn.functional.normalize(centres[labels] + noise, dim=1), labels)
    assert plain.mining is None and plain.violating_fraction == plain.active_fraction
    assert plain.selected_fraction == 1.0


def test_every_loss_and_miner_option_reaches_the_built_loss() -> None:
    cfg = TrainConfig.from_yaml(None, [
        "loss.miner=batch_all", "loss.only_active=false", "loss.soft_margin=true", "loss.squared=true",
        "loss.margin=0.3",
    ]).loss
    loss = build_loss(cfg)
    assert isinstance(loss, TripletLoss) and loss.soft_margin and loss.squared and loss.margin == 0.3
    assert isinstance(loss.miner, BatchAllMiner) and not loss.miner.only_active and loss.miner.squared
    semi = build_loss(LossConfig(miner=MinerKind.SEMI_HARD, semi_hard_mode=SemiHardMode.ALL))
    assert isinstance(semi.miner, SemiHardMiner) and semi.miner.mode is SemiHardMode.ALL
    pairs = build_loss(TrainConfig.from_yaml(None, [
        "loss.kind=contrastive", "loss.miner=hard_pairs", "loss.pair_strategy=hardest", "loss.pos_threshold=0.1",
        "loss.margin=1.0",
    ]).loss)
    assert isinstance(pairs, ContrastiveLoss) and isinstance(pairs.miner, HardPairMiner)
    assert pairs.miner.strategy is PairStrategy.HARDEST and pairs.miner.pos_threshold == 0.1
    assert build_loss(LossConfig(kind=LossKind.CONTRASTIVE, miner=MinerKind.NONE)).miner is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss.kind=contrastive", "loss.miner=none", "loss.soft_margin=true"], "soft_margin is a triplet-loss option"),
    (["loss.miner=batch_all", "loss.soft_margin=true"], "set loss.only_active=false"),
    (["loss.semi_hard_mode=most"], "loss.semi_hard_mode must be one of"),
    (["loss.pair_strategy=easy"], "loss.pair_strategy must be one of"),
    (["loss.pos_threshold=-1"], "loss.pos_threshold must be >= 0"),
])
def test_bad_loss_options_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_yaml(None, overrides)
