"""Metric-learning losses: contrastive and triplet (docs/ARCHITECTURE.md, "Losses")."""

from trainer.losses.base import LossOutput
from trainer.losses.contrastive import ContrastiveLoss
from trainer.losses.triplet import TripletLoss

__all__ = ["ContrastiveLoss", "LossOutput", "TripletLoss"]
