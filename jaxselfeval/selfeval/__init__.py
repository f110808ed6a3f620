"""The capability token: labels, dataset building, fine-tuning, metrics."""

from jaxselfeval.selfeval.labels import capability_targets, truncation_points
from jaxselfeval.selfeval.metrics import auroc, brier, ece, plot_reliability

__all__ = ["capability_targets", "truncation_points", "auroc", "brier", "ece", "plot_reliability"]
