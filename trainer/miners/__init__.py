"""Online miners: pick the informative triplets or pairs of a batch (see base.py)."""

from trainer.miners.base import (
    MinedPairs,
    MinedTriplets,
    MiningStats,
    PairIndices,
    TripletBlock,
    TripletIndices,
    TripletSelection,
)
from trainer.miners.batch_all import BatchAllMiner
from trainer.miners.batch_hard import BatchHardMiner
from trainer.miners.hard_pair import HardPairMiner, PairStrategy
from trainer.miners.pair_base import PairMiner
from trainer.miners.semi_hard import SemiHardMiner, SemiHardMode
from trainer.miners.triplet_base import TripletMiner

__all__ = [
    "BatchAllMiner",
    "BatchHardMiner",
    "HardPairMiner",
    "MinedPairs",
    "MinedTriplets",
    "MiningStats",
    "PairIndices",
    "PairMiner",
    "PairStrategy",
    "SemiHardMiner",
    "SemiHardMode",
    "TripletBlock",
    "TripletIndices",
    "TripletMiner",
    "TripletSelection",
]
