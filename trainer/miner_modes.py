"""The miners' option enums, in a module without torch.

:mod:`trainer.config` names them as config fields and the API validates retrain
overrides with that config (docs/CONFIG.md, "Training config overrides"), so they
must be importable without loading torch; the miners (``trainer.miners``) use them.
"""

from __future__ import annotations

from enum import StrEnum


class SemiHardMode(StrEnum):
    """Which semi-hard triplets to return.

    ``HARDEST``: for every anchor-positive pair, the closest semi-hard negative
    (FaceNet, Schroff et al. 2015): at most one triplet per pair, so the output
    stays O(B K).  ``ALL``: every semi-hard triplet, as pytorch-metric-learning's
    ``TripletMarginMiner(type_of_triplets="semihard")``; its output can grow like
    B^2 K (a loss consumes it in row form, without expanding it).
    """

    HARDEST = "hardest"
    ALL = "all"


class PairStrategy(StrEnum):
    """``ACTIVE``: every pair with a non-zero loss, each unordered pair once (i < j).
    ``HARDEST``: per anchor, its farthest positive and its closest negative, each
    kept only if active (so a pair may appear once per end); ties go to the
    lowest index."""

    ACTIVE = "active"
    HARDEST = "hardest"
