"""Which model a retrain serves: a plain, recorded comparison of every contender.

Contenders, all scored on the *same* fixed holdout (the trainer's class split by stable
hash, over the current catalog), by the same code, at the same moment, so the numbers
are comparable; registered metrics from an older catalog are not used:

1. the **trained** candidate (the recipe the search chose, trained on every training class);
2. the **pretrained** baseline: the backbone's frozen ImageNet features (trainer/baseline.py).
   The trained model must beat it, or the baseline is the challenger instead -- a shop is
   never served a model worse than the features it started from;
3. the **active** model: the challenger must beat it by ``settings.promotion_margin``
   (small wins are noise and a reindex is not free).

The decision lists every comparison it made, with both scores and the outcome.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROMOTION_METRIC = "map_at_r"


@dataclass(frozen=True)
class Contender:
    version: str
    role: str  # "trained", "pretrained" or "active"
    metrics: dict[str, Any]

    def score(self, metric: str) -> float:
        if metric not in self.metrics:
            raise ValueError(f"the {self.role} model {self.version}'s holdout metrics have no {metric!r}: "
                             f"{sorted(self.metrics)}")
        return float(self.metrics[metric])


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    """The challenger's score (the trained model's, or the baseline's when it won)."""
    active: float | None
    margin: float
    chosen: str | None = None
    """The version promoted (None: the active model stays)."""
    challenger: str | None = None
    challenger_role: str = "trained"
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(trained: Contender, active: Contender | None, margin: float, *, baseline: Contender | None = None,
           metric: str = PROMOTION_METRIC) -> PromotionDecision:
    """The challenger is the trained model if it beats the baseline (when there is one), else the
    baseline; it is promoted iff there is no active model or it beats the active one by ``margin``."""
    comparisons: list[dict[str, Any]] = []
    challenger = trained
    if baseline is not None:
        t, b = trained.score(metric), baseline.score(metric)
        won = t > b
        comparisons.append(_comparison(trained, baseline, metric, 0.0, won,
                                       f"trained {t:.4f} {'beats' if won else 'does not beat'} the frozen "
                                       f"pretrained features' {b:.4f}"))
        if not won:
            challenger = baseline
    score = challenger.score(metric)
    common = {"metric": metric, "candidate": score, "margin": margin, "challenger": challenger.version,
              "challenger_role": challenger.role}
    lead = ("" if challenger is trained else
            "nothing trained beat the frozen pretrained features, so they are the challenger; ")
    if active is None:
        reason = f"{lead}no active model to compare with"
        return PromotionDecision(True, reason, active=None, chosen=challenger.version, comparisons=comparisons,
                                 **common)
    baseline_score = active.score(metric)
    gain = score - baseline_score
    promote = gain >= margin
    if promote:
        reason = (f"{lead}{metric} {score:.4f} beats the active model's {baseline_score:.4f} by {gain:+.4f} "
                  f"(margin {margin})")
    else:
        reason = (f"{lead}{metric} {score:.4f} vs the active model's {baseline_score:.4f}: {gain:+.4f} is below "
                  f"the margin {margin}; the active model stays")
    comparisons.append(_comparison(challenger, active, metric, margin, promote, reason))
    return PromotionDecision(promote, reason, active=baseline_score, chosen=challenger.version if promote else None,
                             comparisons=comparisons, **common)


def _comparison(a: Contender, b: Contender, metric: str, margin: float, a_wins: bool, says: str) -> dict[str, Any]:
    return {"a": a.version, "a_role": a.role, "a_score": a.score(metric), "b": b.version, "b_role": b.role,
            "b_score": b.score(metric), "metric": metric, "margin": margin, "a_wins": a_wins, "says": says}
