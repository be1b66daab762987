"""Whether a retrained model replaces the active one: a plain, recorded comparison.

Both models are scored on the *same* fixed holdout (the trainer's class split by
stable hash, over the current catalog), by the same code, at the same moment, so
the numbers are comparable; the active model's registered metrics may be from an
older catalog and are not used. The candidate must beat the active model's MAP@R
by ``settings.promotion_margin``: small wins are noise and a reindex is not free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PROMOTION_METRIC = "map_at_r"


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    active: float | None
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(candidate: dict[str, Any], active: dict[str, Any] | None, margin: float,
           metric: str = PROMOTION_METRIC) -> PromotionDecision:
    """Promote iff there is no active model, or ``candidate - active >= margin`` on ``metric``."""
    if metric not in candidate:
        raise ValueError(f"the candidate's holdout metrics have no {metric!r}: {sorted(candidate)}")
    score = float(candidate[metric])
    if active is None:
        return PromotionDecision(True, "no active model to compare with", metric, score, None, margin)
    baseline = float(active[metric])
    gain = score - baseline
    if gain >= margin:
        reason = f"{metric} {score:.4f} beats the active model's {baseline:.4f} by {gain:+.4f} (margin {margin})"
        return PromotionDecision(True, reason, metric, score, baseline, margin)
    reason = (f"{metric} {score:.4f} vs the active model's {baseline:.4f}: {gain:+.4f} is below "
              f"the margin {margin}; the active model stays")
    return PromotionDecision(False, reason, metric, score, baseline, margin)
