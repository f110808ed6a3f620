"""Strategies that spend inference compute where the capability score says it helps."""

from jaxselfeval.strategies.config import AdaptiveConfig, PruneConfig, check_threshold
from jaxselfeval.strategies.run import (Runner, adaptive, add_rm_scores, pool_records,
                                        prune_records, prune_run, sample_pool, threshold_sweep)

__all__ = ["AdaptiveConfig", "PruneConfig", "check_threshold", "Runner", "adaptive",
           "add_rm_scores", "pool_records", "prune_records", "prune_run", "sample_pool",
           "threshold_sweep"]
