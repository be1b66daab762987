"""Metric-learning losses: contrastive and triplet (DESIGN.md section 5)."""

from trainer.losses.base import LossOutput
from trainer.losses.contrastive import ContrastiveLoss
from trainer.losses.triplet import TripletLoss

__all__ = ["ContrastiveLoss", "LossOutput", "TripletLoss"]
