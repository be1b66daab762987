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

A challenger the holdout would promote over an active model then faces the **shadow
check** (:func:`with_shadow`; the replay is worker/flows/shadow.py, the rule
``settings.shadow``, docs/DECISIONS.md "Shadow evaluation"): it is refused if it ranks
fewer of the shop's feedback pairs correctly than the active model, beyond a tolerance,
or if its answers to the logged queries overlap suspiciously little with the active
model's while its holdout gain is small. The decision's ``shadow`` records the numbers,
the checks and the rule, or why the check was skipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.config import ShadowRule

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
    shadow: dict[str, Any] | None = None
    """The shadow check (:func:`with_shadow`): its numbers and checks, or ``skipped`` and why."""

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


def with_shadow(decision: PromotionDecision, rule: ShadowRule, report: dict[str, Any] | None = None, *,
                skipped: str | None = None) -> PromotionDecision:
    """``decision`` with its shadow check applied: ``report`` (a ``ShadowReport.to_dict()``) or why
    there is none (``skipped``, or the report's own ``skipped``). Only a promotion can be refused."""
    shadow: dict[str, Any] = {**(report or {}), "rule": asdict(rule)}
    skipped = skipped or shadow.get("skipped")
    if skipped:
        shadow.update(skipped=skipped, passed=None, checks=[])
        reason = decision.reason + (f"; shadow check skipped: {skipped}" if decision.promote else "")
        return replace(decision, reason=reason, shadow=shadow)
    if decision.active is None:
        raise ValueError("a shadow check needs the active model's holdout score")
    gain = decision.candidate - decision.active
    shadow["holdout"] = {"metric": decision.metric, "candidate": decision.candidate, "active": decision.active,
                         "gain": gain}
    pairs, cand, active = shadow["feedback_pairs"], shadow["candidate_correct"], shadow["active_correct"]
    allowed = rule.feedback_tolerance * pairs
    feedback_ok = cand >= active - allowed
    overlap = shadow["overlap"]
    overlap_ok = overlap >= rule.min_overlap or gain >= rule.low_overlap_gain
    checks = [
        {"check": "feedback", "passed": feedback_ok,
         "says": (f"ranks {cand} of {pairs} feedback pairs correctly, the active model {active} "
                  f"(tolerance {rule.feedback_tolerance} x {pairs} = {allowed:.2f})")},
        {"check": "overlap", "passed": overlap_ok,
         "says": (f"top-{shadow['k']} overlap with the active model {overlap:.3f} on {shadow['queries']} logged "
                  f"queries (minimum {rule.min_overlap}, or a holdout gain of {rule.low_overlap_gain}: "
                  f"{gain:+.4f})")},
    ]
    passed = feedback_ok and overlap_ok
    shadow.update(passed=passed, checks=checks)
    if not passed:
        failed = "; ".join(c["says"] for c in checks if not c["passed"])
        return replace(decision, promote=False, chosen=None, shadow=shadow,
                       reason=f"{decision.reason}, but the shadow check refuses it: {failed}; the active model stays")
    return replace(decision, shadow=shadow, reason=f"{decision.reason}; shadow check passed")
